"""Staff sessions read a tenant's stream only with the permissions of what it carries
(``tenants.view_tenant`` and its producer's: ``jobs.view_job`` for a job's progress,
``inference.view_model`` for a model's output); platform streams stay every operator's."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import AsyncClient, Client

from config.asgi import application
from streaming.eventlog import get_log
from streaming.loglines import PLATFORM_TENANT
from tenants.models import Tenant
from tenants.tests.factories import grant

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def session(staff_user: Any) -> Any:
    """The staff user's session cookie (for the async client and WebSocket handshakes)."""
    client = Client()
    client.force_login(staff_user)
    return client.cookies


def open_stream(tenant_id: int, kind: str) -> str:
    sid = f"s-{uuid.uuid4().hex}"
    stream_log = get_log()
    stream_log.create(sid, tenant_id=tenant_id, kind=kind)
    stream_log.close(sid, {"reason": "done"})  # ended: the SSE answer ends too
    return sid


def read(sid: str, cookies: Any) -> tuple[int, int]:
    """The status of the stream's SSE and of its metadata, with the session."""

    async def run() -> tuple[int, int]:
        client = AsyncClient()
        client.cookies = cookies
        events = await client.get(f"/v1/streams/{sid}/events")
        if events.streaming:
            [chunk async for chunk in events.streaming_content]
        meta = await client.get(f"/v1/streams/{sid}")
        return events.status_code, meta.status_code

    return async_to_sync(run)()


def websocket_close(sid: str, cookies: Any) -> int | None:
    """The close code a staff session's socket gets (None: it was let in)."""

    async def run() -> int | None:
        cookie = f"{settings.SESSION_COOKIE_NAME}={cookies[settings.SESSION_COOKIE_NAME].value}"
        socket = WebsocketCommunicator(
            application,
            f"/ws/v1/streams/{sid}",
            headers=[(b"cookie", cookie.encode()), (b"origin", b"http://localhost")],
        )
        await socket.connect()
        first = await socket.receive_output(timeout=5)
        await socket.disconnect()
        return first.get("code") if first["type"] == "websocket.close" else None

    return async_to_sync(run)()


def test_a_staff_user_without_permissions_reads_no_tenant_stream(
    tenant: Tenant, session: Any
) -> None:
    for kind in ("text", "data", "logs"):
        sid = open_stream(tenant.pk, kind)
        assert read(sid, session) == (403, 403), kind
        assert websocket_close(sid, session) == 4403, kind


def test_a_tenant_stream_takes_view_tenant_and_its_producers_permission(
    tenant: Tenant, staff_user: Any, session: Any
) -> None:
    job, output = open_stream(tenant.pk, "data"), open_stream(tenant.pk, "text")
    user = grant(staff_user, "tenants.view_tenant")
    assert read(job, session) == (403, 403)
    assert read(open_stream(tenant.pk, "logs"), session) == (200, 200)
    grant(user, "jobs.view_job")
    assert read(job, session) == (200, 200)
    assert websocket_close(job, session) is None
    assert read(output, session) == (403, 403)


def test_platform_streams_stay_every_operators(session: Any) -> None:
    sid = open_stream(PLATFORM_TENANT, "logs")
    assert read(sid, session) == (200, 200)
    assert websocket_close(sid, session) is None
