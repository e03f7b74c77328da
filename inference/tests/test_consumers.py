"""Streaming inference over WebSocket, through the real ASGI application."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from inference.tests.conftest import make_version
from streaming.eventlog import get_log
from tenants.tests.factories import make_key

pytestmark = pytest.mark.django_db(transaction=True)


def _ws(model: str, key: str | None = None) -> WebsocketCommunicator:
    from config.asgi import application

    headers = [(b"x-api-key", key.encode())] if key else []
    return WebsocketCommunicator(application, f"/ws/v1/models/{model}/infer", headers=headers)


async def _closed_with(ws: WebsocketCommunicator) -> int:
    while True:
        out = await ws.receive_output(timeout=5)
        if out["type"] == "websocket.close":
            return int(out["code"])


async def _until_end(ws: WebsocketCommunicator) -> list[dict]:
    got = []
    while True:
        message = await ws.receive_json_from(timeout=10)
        got.append(message)
        if message.get("event") == "end":
            return got


def test_it_runs_inferences_one_after_another_on_one_socket(key, eager) -> None:
    make_version()

    async def run() -> None:
        ws = _ws("doubler")
        await ws.connect()
        await ws.send_json_to({"type": "auth", "token": key[1]})
        assert await ws.receive_json_from() == {"type": "ready", "model": "doubler"}
        await ws.send_json_to({"type": "infer", "inputs": [{"x": 1}, {"x": 2}]})
        started = await ws.receive_json_from()
        assert started["type"] == "started" and started["kind"] == "analysis"
        assert started["version"] == "1"
        events = await _until_end(ws)
        assert [(e["event"], e["data"].get("output")) for e in events] == [
            ("result", {"y": 2}),
            ("result", {"y": 4}),
            ("end", None),
        ]
        await ws.send_json_to({"type": "infer", "input": {"x": 5}})
        assert (await ws.receive_json_from())["type"] == "started"
        assert (await _until_end(ws))[0]["data"]["output"] == {"y": 10}
        await ws.disconnect()

    async_to_sync(run)()


def test_bad_input_is_an_error_message_and_the_socket_stays(key, eager) -> None:
    make_version()

    async def run() -> None:
        ws = _ws("doubler", key[1])
        await ws.connect()
        assert (await ws.receive_json_from())["type"] == "ready"
        await ws.send_json_to({"type": "infer", "input": {"x": -3}})
        error = await ws.receive_json_from()
        assert error["type"] == "error" and error["code"] == "invalid_input"
        assert "x" in error["errors"]["input"]
        await ws.send_json_to({"type": "infer"})
        assert (await ws.receive_json_from())["code"] == "invalid_input"
        await ws.send_json_to({"type": "subscribe", "after": None})
        assert (await ws.receive_json_from())["code"] == "bad_message"
        await ws.send_json_to({"type": "infer", "input": {"x": 3}})
        assert (await ws.receive_json_from())["type"] == "started"
        await ws.disconnect()

    async_to_sync(run)()


def test_refusals_use_the_documented_close_codes(tenant, key) -> None:
    make_version()
    _, jobs_only = make_key(tenant, scopes=["jobs"])
    tenant.allowed_models = ["other"]
    tenant.save()

    async def code(model: str, raw: str) -> int:
        ws = _ws(model, raw)
        await ws.connect()
        return await _closed_with(ws)

    async def run() -> None:
        assert await code("doubler", "sk_live_nope.x") == 4401
        assert await code("doubler", jobs_only) == 4403
        assert await code("doubler", key[1]) == 4404  # the plan does not allow it
        assert await code("no-such-model", key[1]) == 4404

    async_to_sync(run)()


@pytest.mark.usefixtures("worker_everywhere")
def test_cancel_and_disconnect_stop_the_running_inference(key) -> None:
    make_version()  # not eager: no worker consumes the task, so the stream stays open

    async def run() -> tuple[str, str]:
        ws = _ws("doubler", key[1])
        await ws.connect()
        await ws.receive_json_from()
        await ws.send_json_to({"type": "cancel"})
        assert (await ws.receive_json_from())["code"] == "not_running"
        await ws.send_json_to({"type": "infer", "input": {"x": 1}})
        first = (await ws.receive_json_from())["stream"]
        await ws.send_json_to({"type": "infer", "input": {"x": 2}})
        assert (await ws.receive_json_from())["code"] == "busy"
        await ws.send_json_to({"type": "cancel"})
        assert await ws.receive_json_from() == {"type": "cancelling", "stream": first}
        ws2 = _ws("doubler", key[1])
        await ws2.connect()
        await ws2.receive_json_from()
        await ws2.send_json_to({"type": "infer", "input": {"x": 3}})
        second = (await ws2.receive_json_from())["stream"]
        await ws2.disconnect()
        await ws.disconnect()
        return first, second

    first, second = async_to_sync(run)()
    assert get_log().is_cancelled(first)
    assert get_log().is_cancelled(second)
