"""Who may read a stream with a staff session (an admin login: the live dashboard, the
browsable API), where no tenant key decides.

Platform streams (metrics, worker logs: tenant 0) are the operators': any active staff user
reads them. A tenant's stream is that tenant's traffic: reading it takes
``tenants.view_tenant`` and the permission of what the stream carries, which its producer
registers for its kinds (:func:`stream_kind_permissions`: a job's progress takes
``jobs.view_job``), so this app needs to know nothing of its producers. Superusers hold every
permission.
"""

from __future__ import annotations

from typing import Any

from streaming.eventlog import StreamMeta
from streaming.loglines import PLATFORM_TENANT

_KIND_PERMISSIONS: dict[str, tuple[str, ...]] = {}


def stream_kind_permissions(kind: str, *permissions: str) -> None:
    """What a staff session needs, besides ``tenants.view_tenant``, to read a tenant's stream
    of ``kind`` (a producer calls this from its ``AppConfig.ready``)."""
    _KIND_PERMISSIONS[kind] = permissions


def staff_permissions_for(meta: StreamMeta) -> tuple[str, ...]:
    """The permissions a staff user needs to read this stream (none for a platform stream)."""
    if meta.tenant_id == PLATFORM_TENANT:
        return ()
    return ("tenants.view_tenant", *_KIND_PERMISSIONS.get(meta.kind, ()))


def staff_may_read(user: Any, meta: StreamMeta) -> bool:
    """Whether ``user`` (an active staff user, else never) may read the stream. Synchronous:
    a user's permissions come from the database, once per user object."""
    if user is None or not (user.is_active and user.is_staff):
        return False
    return bool(user.has_perms(staff_permissions_for(meta)))
