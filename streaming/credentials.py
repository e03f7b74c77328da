"""Long-lived connections stay bound to the credential that opened them.

A WebSocket, an SSE response, a results follower or a media stream may stay open for hours;
the key that opened it may be revoked, expire or lose its tenant meanwhile. One watch per
process re-verifies every credential its open connections hold, each every
``WS_REAUTH_SECONDS`` from when it was first bound, once per credential however many
connections hold it (10,000 sockets on one key cost one check), and tells the holders of one
that no longer verifies. A check goes through the process's key cache like any request, so a
revocation made in another process is seen within ``API_KEY_CACHE_SECONDS`` + the check
interval.

The watch is a thread, not a task of an event loop: gunicorn's threads, daphne's loop and
uvicorn's loop hold credentials alike, and a loop never waits on the database for it. Holders
on an event loop are called back on their loop (:func:`bind_on_loop`).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connections
from rest_framework import exceptions

from tenants.authentication import authenticate_credential

log = logging.getLogger(__name__)


class Binding:
    """One connection bound to a credential. ``lost`` turns true (once) when the credential
    stops verifying; ``on_lost`` is then called from the watch's thread."""

    __slots__ = ("_on_lost", "credential", "lost")

    def __init__(self, credential: str, on_lost: Callable[[], None] | None) -> None:
        self.credential = credential
        self.lost = False
        self._on_lost = on_lost

    def lose(self) -> None:
        self.lost = True
        if self._on_lost is not None:
            try:
                self._on_lost()
            except Exception:  # one holder's failure must not spare the others
                log.exception("ending a connection of a lost credential failed")


class CredentialWatch:
    """Re-verifies the credentials of open connections, each on its own schedule."""

    def __init__(self, verify: Callable[[str], object] = authenticate_credential) -> None:
        self._verify = verify
        self._cond = threading.Condition()
        self._held: dict[str, set[Binding]] = {}
        self._due: list[tuple[float, str]] = []  # a heap; entries of unbound credentials stay
        self._thread: threading.Thread | None = None

    def bind(self, credential: str, on_lost: Callable[[], None] | None = None) -> Binding:
        binding = Binding(credential, on_lost)
        with self._cond:
            holders = self._held.get(credential)
            if holders is None:
                holders = self._held[credential] = set()
                heapq.heappush(self._due, (time.monotonic() + _interval(), credential))
                self._cond.notify()
            holders.add(binding)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="credential-watch", daemon=True
                )
                self._thread.start()
        return binding

    def unbind(self, binding: Binding) -> None:
        with self._cond:
            holders = self._held.get(binding.credential)
            if holders is not None:
                holders.discard(binding)
                if not holders:
                    del self._held[binding.credential]

    def _next_due(self) -> list[str]:
        """Wait until credentials are due; return them, rescheduled."""
        with self._cond:
            while True:
                while self._due and self._due[0][1] not in self._held:
                    heapq.heappop(self._due)  # unbound since it was scheduled
                if not self._due:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                if self._due[0][0] > now:
                    self._cond.wait(self._due[0][0] - now)
                    continue
                due = []
                while self._due and self._due[0][0] <= now:
                    _, credential = heapq.heappop(self._due)
                    if credential in self._held and credential not in due:
                        due.append(credential)
                        heapq.heappush(self._due, (now + _interval(), credential))
                return due

    def _run(self) -> None:
        while True:
            try:
                for credential in self._next_due():
                    self._check(credential)
            finally:
                # This thread queries only every WS_REAUTH_SECONDS: it holds no connection.
                connections.close_all()

    def _check(self, credential: str) -> None:
        try:
            self._verify(credential)
        except exceptions.AuthenticationFailed:
            with self._cond:
                lost = self._held.pop(credential, set())
            for binding in lost:
                binding.lose()
        except Exception:  # noqa: BLE001 - the database is unreachable: no verdict on the key
            log.warning("re-checking a stream credential failed; next round", exc_info=True)


def _interval() -> float:
    return float(settings.WS_REAUTH_SECONDS)


_watch: CredentialWatch | None = None
_pending: set[asyncio.Task[Any]] = set()
_watch_lock = threading.Lock()


def credential_watch() -> CredentialWatch:
    """The process's watch."""
    global _watch
    with _watch_lock:
        if _watch is None:
            _watch = CredentialWatch()
        return _watch


def bind(credential: str, on_lost: Callable[[], None] | None = None) -> Binding:
    return credential_watch().bind(credential, on_lost)


def unbind(binding: Binding) -> None:
    credential_watch().unbind(binding)


def bind_on_loop(credential: str, on_lost: Callable[[], Any]) -> Binding:
    """:func:`bind` for a holder on the running event loop: ``on_lost`` runs on that loop, and
    a coroutine it returns is scheduled there (a WebSocket's ``close``)."""
    loop = asyncio.get_running_loop()

    def call() -> None:
        result = on_lost()
        if asyncio.iscoroutine(result):
            task = loop.create_task(result)
            _pending.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(_pending.discard)

    def from_watch() -> None:
        try:
            loop.call_soon_threadsafe(call)
        except RuntimeError:  # the loop has closed: its connections are gone already
            log.debug("a lost credential's loop is closed")

    return bind(credential, from_watch)
