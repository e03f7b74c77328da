"""Leases of the Idempotency-Keys this process is creating jobs for.

A key row claimed by a request carries ``lease_until``. While the request works, one daemon
thread of its process pushes every held row's lease forward (one UPDATE) every third of
``JOBS_IDEMPOTENCY_LEASE_SECONDS``. A process that dies (kill -9, out of memory, a lost machine)
stops renewing, so its keys can be taken over once their lease has lapsed: within one lease of
the crash, not after a fixed wait. A request that only *stalls* past its lease (a paused
process, a database slower than the lease) may lose its key to another request; the claim is
fenced (``jobs.services.job_submit`` writes the answer under the row's id in the job's own
transaction), so the stalled one creates nothing.

The thread runs only while this process holds a key, and closes its database connection when it
stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from jobs.models import IdempotencyKey

log = logging.getLogger(__name__)


def lease_length() -> timedelta:
    return timedelta(seconds=settings.JOBS_IDEMPOTENCY_LEASE_SECONDS)


def renew(ids: Iterable[int]) -> int:
    """Push the leases of these in-flight rows one lease forward; how many were renewed."""
    held = IdempotencyKey.objects.filter(pk__in=list(ids), response_status__isnull=True)
    with transaction.atomic():  # FOR UPDATE needs one, though this is a single statement
        # SKIP LOCKED: a row whose request is writing its answer stays locked until that
        # commit (which checks every task's foreign key: seconds for a big job). It needs no
        # renewal, and waiting for it would hold up every other lease of this process.
        return IdempotencyKey.objects.filter(
            pk__in=held.select_for_update(skip_locked=True).values("pk")
        ).update(lease_until=timezone.now() + lease_length())


class LeaseKeeper:
    """The rows this process holds, and the thread that renews them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[int] = set()
        self._thread: threading.Thread | None = None

    def hold(self, row_id: int) -> None:
        with self._lock:
            self._held.add(row_id)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="idempotency-leases", daemon=True
                )
                self._thread.start()

    def release(self, row_id: int) -> None:
        with self._lock:
            self._held.discard(row_id)

    def holds(self, row_id: int) -> bool:
        """Whether a request of this very process is still working under this row."""
        with self._lock:
            return row_id in self._held

    def _run(self) -> None:
        try:
            while True:
                time.sleep(settings.JOBS_IDEMPOTENCY_LEASE_SECONDS / 3)
                with self._lock:
                    held = list(self._held)
                    if not held:
                        self._thread = None
                        return
                try:
                    renew(held)
                except Exception:
                    # Whatever failed, the thread lives on: the next tick tries again, and a
                    # lease that lapses meanwhile is fenced.
                    log.exception("could not renew %d idempotency-key leases", len(held))
        finally:
            connections.close_all()


keeper = LeaseKeeper()
