"""How long a streaming answer lives: as long as its client and its credential.

- A client that leaves while the view is still starting its stream, through the project's
  real ASGI application (``config.asgi``): Django cancels the request, but the sync view runs
  on to its end on its thread — the stream it started must be cancelled and its slot given
  back when it returns, not left running for nobody.
- A key revoked (or a tenant deactivated) while its stream is open: the answer ends with an
  ``error`` event ``unauthenticated`` (OpenAI's error chunk on the OpenAI endpoints) within a
  re-check, the work is cancelled and the slot given back.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone
from rest_framework.test import APIClient

from inference.models import Model
from inference.tests.conftest import make_version
from inference.transport import streams
from streaming.eventlog import get_log
from streaming.services import stream_slots_held
from tenants.models import TenantAPIKey
from tenants.selectors import forget_key
from tenants.services import apikey_revoke
from tenants.tests.factories import make_key

pytestmark = pytest.mark.django_db(transaction=True)


def _wait_for(check: Any, what: str, timeout: float = 5) -> None:
    give_up = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.usefixtures("worker_everywhere")
def test_a_stream_started_for_a_client_that_left_is_cancelled_and_frees_its_slot(
    tenant: Any, key: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config.asgi import application  # imported late: the test settings must apply first

    make_version()  # not eager: nothing consumes the task, the stream stays open
    started: list[streams.Started] = []
    stream_made, client_gone = threading.Event(), threading.Event()
    real_start = streams.stream_start

    def start(**kwargs: Any) -> streams.Started:
        """The view's start, held until the client has gone."""
        started.append(real_start(**kwargs))
        stream_made.set()
        client_gone.wait(5)
        return started[-1]

    monkeypatch.setattr(streams, "stream_start", start)
    body = json.dumps({"input": {"x": 1}}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/models/doubler/infer",
        "raw_path": b"/v1/models/doubler/infer",
        "query_string": b"stream=true",
        "root_path": "",
        "headers": [
            (b"host", b"localhost"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-api-key", key[1].encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    received = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        if received == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        # The client goes away once the view has started the stream, before it answers.
        await asyncio.to_thread(stream_made.wait, 5)
        asyncio.get_running_loop().call_later(0.05, client_gone.set)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async_to_sync(application)(scope, receive, send)
    assert not sent  # nothing was answered: the client had gone
    _wait_for(lambda: started, "the view to start the stream")
    _wait_for(lambda: get_log().is_cancelled(started[0].stream_id), "the stream's cancel")
    _wait_for(lambda: stream_slots_held(tenant.pk) == 0, "the slot to come back")


def _until_end(pieces: Any, seconds: float) -> tuple[bool, bytes]:
    """Read a response body on a thread: whether it ended within ``seconds``, and what came."""
    got: list[bytes] = []
    done = threading.Event()

    def read() -> None:
        for piece in pieces:
            got.append(piece)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    ended = done.wait(seconds)
    return ended, b"".join(got)


def _streaming(raw: str, path: str, body: dict[str, Any]) -> Any:
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=raw)
    response = client.post(path, body, format="json")
    assert response.status_code == 200
    return response


@pytest.mark.usefixtures("worker_everywhere")
@pytest.mark.parametrize("ending", ["revoked", "expired", "tenant deactivated"])
def test_a_streams_answer_ends_when_its_credential_stops_verifying(
    tenant: Any, settings: Any, ending: str
) -> None:
    settings.WS_REAUTH_SECONDS = 0.2
    make_version()  # not eager: the stream stays open until something ends it
    row, raw = make_key(tenant, scopes=["infer"])
    response = _streaming(raw, "/v1/models/doubler/infer?stream=true", {"input": {"x": 1}})
    stream_id = response["X-Sluice-Stream"]
    pieces = iter(response.streaming_content)
    assert next(pieces) == b": connected\n\n"
    assert stream_slots_held(tenant.pk) == 1
    if ending == "revoked":
        apikey_revoke(key=row)
    elif ending == "expired":
        TenantAPIKey.objects.filter(pk=row.pk).update(expiry_date=timezone.now())
        forget_key(row.prefix)  # as the cache's expiry would, later
    else:
        tenant.is_active = False
        tenant.save(update_fields=["is_active"])
    ended, rest = _until_end(pieces, 0.2 + 0.25 + 2)
    assert ended
    assert rest.endswith(b'event: error\ndata: {"code":"unauthenticated"}\n\n')
    assert get_log().is_cancelled(stream_id)  # nobody may read it: the work stops
    assert stream_slots_held(tenant.pk) == 0


@pytest.mark.usefixtures("worker_everywhere")
def test_an_openai_streams_answer_ends_with_an_error_chunk(tenant: Any, settings: Any) -> None:
    settings.WS_REAUTH_SECONDS = 0.2
    prompt = {"type": "object", "properties": {"prompt": {"type": "string"}}}
    make_version("writer", task=Model.Task.TEXT, input_schema=prompt)
    row, raw = make_key(tenant, scopes=["infer"])
    response = _streaming(
        raw, "/v1/completions", {"model": "writer", "prompt": "Hi", "stream": True}
    )
    pieces = iter(response.streaming_content)
    assert next(pieces) == b": connected\n\n"
    apikey_revoke(key=row)
    ended, rest = _until_end(pieces, 0.2 + 0.25 + 2)
    assert ended
    error = json.loads(rest.decode().removeprefix("data: "))["error"]
    assert error["code"] == "unauthenticated"
    assert stream_slots_held(tenant.pk) == 0
