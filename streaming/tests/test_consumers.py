"""The WebSocket protocol, through the real ASGI application (Origin check included)."""

from __future__ import annotations

import json
import uuid

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator

from streaming.eventlog import get_log
from tenants.services import apikey_revoke
from tenants.tests.factories import make_key

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def stream(tenant):
    sid = f"s-{uuid.uuid4().hex}"
    get_log().create(sid, tenant_id=tenant.pk, kind="text")
    return sid


def _run(coro_fn):
    return async_to_sync(coro_fn)()


def _communicator(stream: str, headers=(), origin: str | None = None) -> WebsocketCommunicator:
    from config.asgi import application  # imported late: the test settings must apply first

    hdrs = [(k.encode(), v.encode()) for k, v in headers]
    if origin:
        hdrs.append((b"origin", origin.encode()))
    return WebsocketCommunicator(application, f"/ws/v1/streams/{stream}", headers=hdrs)


async def _closed_with(ws: WebsocketCommunicator) -> int:
    """The close code; then the disconnect daphne sends after a close, so the consumer's
    cleanup runs (its slot and its credential binding are given back)."""
    while True:
        out = await ws.receive_output(timeout=5)
        if out["type"] == "websocket.close":
            await ws.disconnect()
            return int(out["code"])


def test_it_authenticates_by_first_message_and_streams_events(key, stream):
    log = get_log()
    ids = [log.append(stream, "token", {"i": i}) for i in range(2)]
    log.close(stream)

    async def run():
        ws = _communicator(stream)
        assert (await ws.connect())[0]
        await ws.send_json_to({"type": "auth", "token": key[1]})
        assert await ws.receive_json_from() == {"type": "ready", "stream": stream}
        await ws.send_json_to({"type": "subscribe", "after": None})
        got = [await ws.receive_json_from() for _ in range(3)]
        assert [m["id"] for m in got[:2]] == ids
        assert got[2]["event"] == "end"
        assert await _closed_with(ws) == 1000

    _run(run)


def test_it_authenticates_by_header_and_resumes_after_an_id(key, stream):
    log = get_log()
    ids = [log.append(stream, "token", {"i": i}) for i in range(3)]

    async def run():
        ws = _communicator(stream, headers=[("x-api-key", key[1])])
        await ws.connect()
        assert (await ws.receive_json_from())["type"] == "ready"
        await ws.send_json_to({"type": "subscribe", "after": ids[0]})
        got = [await ws.receive_json_from() for _ in range(2)]
        assert [m["id"] for m in got] == ids[1:]
        await ws.disconnect()

    _run(run)


@pytest.mark.parametrize(
    ("first", "code"),
    [
        ({"type": "auth", "token": "sk_live_nopenope.x"}, 4401),
        ({"type": "subscribe", "after": None}, 4401),
    ],
)
def test_it_refuses_unauthenticated_sockets(stream, first, code):
    async def run():
        ws = _communicator(stream)
        await ws.connect()
        await ws.send_json_to(first)
        assert await _closed_with(ws) == code

    _run(run)


def test_it_closes_a_socket_that_never_authenticates(stream, settings):
    settings.WS_AUTH_TIMEOUT_SECONDS = 0.2

    async def run():
        ws = _communicator(stream)
        await ws.connect()
        assert await _closed_with(ws) == 4408

    _run(run)


def test_another_tenants_stream_is_refused(other_tenant, stream):
    _, raw = make_key(other_tenant, scopes=["streams"])

    async def run():
        ws = _communicator(stream, headers=[("x-api-key", raw)])
        await ws.connect()
        assert await _closed_with(ws) == 4404

    _run(run)


def test_a_key_without_the_streams_scope_is_refused(tenant, stream):
    _, raw = make_key(tenant, scopes=["infer"])

    async def run():
        ws = _communicator(stream, headers=[("x-api-key", raw)])
        await ws.connect()
        assert await _closed_with(ws) == 4403

    _run(run)


def test_oversized_frames_past_the_server_limit_close_with_4009(key, stream, settings):
    settings.WS_MAX_FRAME_BYTES = 100

    async def run():
        ws = _communicator(stream, headers=[("x-api-key", key[1])])
        await ws.connect()
        await ws.receive_json_from()
        await ws.send_to(text_data=json.dumps({"type": "subscribe", "pad": "x" * 200}))
        assert await _closed_with(ws) == 4009

    _run(run)


def test_garbage_gets_an_error_event_then_4400(key, stream):
    async def run():
        ws = _communicator(stream, headers=[("x-api-key", key[1])])
        await ws.connect()
        await ws.receive_json_from()
        for garbage in ("not json", json.dumps([1, 2]), json.dumps({"type": "dance"})):
            await ws.send_to(text_data=garbage)
            if garbage != json.dumps({"type": "dance"}):
                reply = await ws.receive_json_from()
                assert reply["type"] == "error"
                assert reply["code"] == "bad_message"
        assert await _closed_with(ws) == 4400

    _run(run)


def test_cancel_sets_the_flag_producers_poll(key, stream):
    async def run():
        ws = _communicator(stream, headers=[("x-api-key", key[1])])
        await ws.connect()
        await ws.receive_json_from()
        await ws.send_json_to({"type": "cancel"})
        assert await ws.receive_json_from() == {"type": "cancelling"}
        assert await sync_to_async(get_log().is_cancelled)(stream)
        await ws.disconnect()

    _run(run)


def test_a_revoked_keys_socket_is_closed(tenant, stream, settings):
    settings.WS_REAUTH_SECONDS = 0.2
    row, raw = make_key(tenant, scopes=["streams"])

    async def run():
        ws = _communicator(stream, headers=[("x-api-key", raw)])
        await ws.connect()
        await ws.receive_json_from()
        await sync_to_async(apikey_revoke)(key=row)
        assert await _closed_with(ws) == 4401

    _run(run)


def test_the_tenants_concurrent_stream_limit_holds(tenant, stream):
    tenant.concurrent_streams = 1
    tenant.save()
    _, raw = make_key(tenant, scopes=["streams"])

    async def run():
        first = _communicator(stream, headers=[("x-api-key", raw)])
        await first.connect()
        assert (await first.receive_json_from())["type"] == "ready"
        second = _communicator(stream, headers=[("x-api-key", raw)])
        await second.connect()
        assert await _closed_with(second) == 4429
        await first.disconnect()
        third = _communicator(stream, headers=[("x-api-key", raw)])
        await third.connect()
        assert (await third.receive_json_from())["type"] == "ready"
        await third.disconnect()

    _run(run)


def test_a_foreign_browser_origin_is_refused(key, stream):
    async def run():
        ws = _communicator(stream, headers=[("x-api-key", key[1])], origin="https://evil.test")
        connected, _ = await ws.connect()
        assert not connected
        ok = _communicator(stream, headers=[("x-api-key", key[1])], origin="http://localhost")
        assert (await ok.connect())[0]
        await ok.disconnect()

    _run(run)


def test_every_asgi_command_line_is_the_configured_daphne():
    """1009 needs daphne's protocol limits and closing handshake, which `manage.py serve`
    sets: each way of starting the ASGI process must go through it."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    k8s = yaml.safe_load((root / "deploy/k8s/base/asgi.yaml").read_text().split("---")[0])
    commands = [
        " ".join(compose["services"]["asgi"]["command"]),
        next(
            ln for ln in (root / "Makefile").read_text().splitlines() if "serve --no-worker" in ln
        ),
        " ".join(k8s["spec"]["template"]["spec"]["containers"][0]["command"]),
    ]
    for command in commands:
        assert "manage.py serve --no-worker" in command, command
