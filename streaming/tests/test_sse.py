from __future__ import annotations

import re
import threading
import uuid

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient

from streaming.eventlog import get_log
from tenants.tests.factories import make_key

pytestmark = pytest.mark.django_db(transaction=True)


def _frames(body: str) -> list[dict[str, str]]:
    frames = []
    for block in body.split("\n\n"):
        fields = dict(re.findall(r"^(id|event|data): (.*)$", block, re.M))
        if fields:
            frames.append(fields)
    return frames


def _get(url: str, **headers: str) -> tuple[int, dict[str, str], str]:
    async def run() -> tuple[int, dict[str, str], str]:
        named = {k.replace("_", "-"): v for k, v in headers.items()}
        response = await AsyncClient().get(url, headers=named)
        if response.streaming:
            body = b"".join([chunk async for chunk in response.streaming_content]).decode()
        else:
            body = response.content.decode()
        return response.status_code, dict(response.headers), body

    return async_to_sync(run)()


@pytest.fixture
def stream(tenant):
    sid = f"s-{uuid.uuid4().hex}"
    get_log().create(sid, tenant_id=tenant.pk, kind="text")
    return sid


def test_it_sends_events_as_sse_lines_until_end(key, stream):
    log = get_log()
    first = log.append(stream, "token", {"text": "Hel"})
    log.append(stream, "token", {"text": "lo"})
    log.close(stream, {"reason": "done"})
    status, headers, body = _get(f"/v1/streams/{stream}/events", x_api_key=key[1])
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    assert headers["X-Accel-Buffering"] == "no"
    assert headers["Cache-Control"] == "no-cache"
    frames = _frames(body)
    assert [f["event"] for f in frames] == ["token", "token", "end"]
    assert frames[0] == {"id": first, "event": "token", "data": '{"text":"Hel"}'}


def test_it_resumes_after_last_event_id_without_duplicates(key, stream):
    log = get_log()
    ids = [log.append(stream, "token", {"i": i}) for i in range(4)]
    log.close(stream)
    _, _, body = _get(f"/v1/streams/{stream}/events", x_api_key=key[1], last_event_id=ids[1])
    assert [f.get("id") for f in _frames(body)][:2] == ids[2:]
    _, _, by_query = _get(f"/v1/streams/{stream}/events?after={ids[2]}", x_api_key=key[1])
    assert [f["event"] for f in _frames(by_query)] == ["token", "end"]


def test_it_sends_heartbeats_while_quiet(key, stream, settings):
    settings.SSE_HEARTBEAT_SECONDS = 0.2
    threading.Timer(1.5, lambda: get_log().close(stream)).start()
    _, _, body = _get(f"/v1/streams/{stream}/events", x_api_key=key[1])
    assert body.count(": heartbeat") >= 1
    assert _frames(body)[-1]["event"] == "end"


def test_another_tenants_stream_is_404(other_tenant, stream, client_for):
    _, raw = make_key(other_tenant, scopes=["streams"])
    status, headers, _ = _get(f"/v1/streams/{stream}/events", x_api_key=raw)
    assert status == 404
    assert headers["Content-Type"] == "application/problem+json"
    assert client_for(raw).get(f"/v1/streams/{stream}").status_code == 404


def test_it_refuses_missing_credentials_and_missing_scope(tenant, stream):
    status, headers, _ = _get(f"/v1/streams/{stream}/events")
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="sluice"'
    _, infer_only = make_key(tenant, scopes=["infer"])
    assert _get(f"/v1/streams/{stream}/events", x_api_key=infer_only)[0] == 403


def test_it_rejects_a_malformed_resume_id(key, stream):
    status, _, body = _get(f"/v1/streams/{stream}/events", x_api_key=key[1], last_event_id="nope")
    assert status == 422
    assert "Last-Event-ID" in body


def test_the_metadata_view_describes_the_stream(api, stream):
    body = api.get(f"/v1/streams/{stream}").json()
    assert body["kind"] == "text"
    assert body["closed"] is False
    assert body["events_url"] == f"/v1/streams/{stream}/events"
