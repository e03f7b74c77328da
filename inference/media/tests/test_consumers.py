"""``/ws/v1/media/transcriptions`` in process (the real ASGI application): the session's
stream slot and its credential."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator

from streaming.services import stream_slots_held
from tenants.services import apikey_revoke
from tenants.tests.factories import make_key

pytestmark = pytest.mark.django_db(transaction=True)


def _socket(raw: str, query: str = "") -> WebsocketCommunicator:
    from config.asgi import application  # imported late: the test settings must apply first

    path = "/ws/v1/media/transcriptions" + (f"?{query}" if query else "")
    return WebsocketCommunicator(application, path, headers=[(b"x-api-key", raw.encode())])


async def _closed_with(ws: WebsocketCommunicator, timeout: float = 5) -> int:
    while True:
        out = await ws.receive_output(timeout=timeout)
        if out["type"] == "websocket.close":
            return int(out["code"])


def test_a_closed_session_gives_its_stream_slot_back(tenant: Any) -> None:
    tenant.concurrent_streams = 1
    tenant.save(update_fields=["concurrent_streams"])
    _, raw = make_key(tenant, scopes=["infer"])

    async def refused_twice() -> list[int]:
        codes = []
        for _ in range(2):  # the second needs the slot the first held
            ws = _socket(raw, "model=nosuch")
            await ws.connect()
            codes.append(await _closed_with(ws))
            await ws.disconnect()
        return codes

    assert async_to_sync(refused_twice)() == [4404, 4404]  # no such model, not 4429
    assert stream_slots_held(tenant.pk) == 0


@pytest.mark.usefixtures("worker_everywhere")
def test_a_session_whose_key_is_revoked_is_closed(tenant: Any, settings: Any) -> None:
    pytest.importorskip("pocketsphinx")
    from inference.registry.builtin import TRANSCRIBE, install

    install(TRANSCRIBE)
    settings.WS_REAUTH_SECONDS = 0.2
    row, raw = make_key(tenant, scopes=["infer"])

    async def session() -> int:
        ws = _socket(raw)
        await ws.connect()
        assert (await ws.receive_json_from(timeout=5))["type"] == "ready"
        await sync_to_async(apikey_revoke)(key=row)
        code = await _closed_with(ws)
        await ws.disconnect()
        return code

    assert async_to_sync(session)() == 4401
    assert stream_slots_held(tenant.pk) == 0
