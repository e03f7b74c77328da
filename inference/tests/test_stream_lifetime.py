"""A streaming answer lives no longer than its credential: a key revoked (or expired, or its
tenant deactivated) while its stream is open ends the answer with an ``error`` event
``unauthenticated`` (OpenAI's error chunk on the OpenAI endpoints) within a re-check; the work
is cancelled and the slot given back.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from inference.models import Model
from inference.tests.conftest import make_version
from streaming.log import get_log
from streaming.services import stream_slots_held
from tenants.models import TenantAPIKey
from tenants.selectors import forget_key
from tenants.services import apikey_revoke
from tenants.tests.factories import make_key

pytestmark = pytest.mark.django_db(transaction=True)


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
