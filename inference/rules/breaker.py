"""The circuit breaker of a version (and of a remote runtime's upstream): it measures the
engine, not a caller (docs/inference.md, "The circuit breaker"). State lives in Django's cache
(Redis in production), shared by every process; each process keeps a short-lived view of it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache

from inference.rules import outcome_kinds


class CircuitBreaker:
    """closed → open → (``cooldown`` seconds) → half-open: one probe request passes; its
    success closes the circuit, its failure opens it again for another cooldown.

    It measures the engine, not a caller (docs/inference.md, "The circuit breaker"). Since the
    last success it counts the failures in a row, how many of them were the version's own
    (``engine_error``, ``timeout``, ``worker_lost``: whoever sent the request) and the distinct
    callers (tenants) that failed. It opens when ``failures`` of the version's own came in a
    row, or ``failures`` of any kind from at least ``callers`` callers: an engine error on one
    request's input (``input_error``) is its caller's until other callers fail too, so one
    tenant's inputs cannot open it for the others. ``unavailable`` (nothing served the request:
    no worker took it) is not counted at all. Any success resets everything.

    State per version in the cache: ``cb:<id>:fails``, ``:vfails`` (counters), ``:callers``
    (a set on Redis), ``:opened`` (when it opened; absent = closed), ``:reason`` (the outcome
    that opened it) and ``:probe`` (a half-open probe is in flight). Failures are counted in
    one atomic round trip (a MULTI on Redis; a lock on the embedded LocMem cache).

    Every request reads the state and records its outcome, so each process keeps what it last
    read or wrote for ``INFERENCE_ROUTING_CACHE_SECONDS`` (:data:`_seen`): a healthy version
    costs no cache round trip at all, and a circuit opened by another process is seen here
    within that time. Writes (a failure, the first success after failures) always go to the
    shared cache; the half-open probe is still claimed with an atomic ``cache.add``.
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
    PARTS = ("fails", "vfails", "callers", "opened", "reason", "probe")

    def __init__(
        self,
        *,
        failures: int | None = None,
        cooldown: float | None = None,
        callers: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.failures = failures or settings.INFERENCE_BREAKER_FAILURES
        self.cooldown = (
            cooldown if cooldown is not None else settings.INFERENCE_BREAKER_COOLDOWN_SECONDS
        )
        self.callers = callers or settings.INFERENCE_BREAKER_CALLERS
        self.clock = clock

    @staticmethod
    def _key(version_id: int, part: str) -> str:
        return f"inference:cb:{version_id}:{part}"

    def _read(self, version_id: int) -> tuple[float | None, int]:
        """(opened at, consecutive failures), from this process's copy while it is fresh."""
        now = time.monotonic()
        ttl = settings.INFERENCE_ROUTING_CACHE_SECONDS
        seen = _seen.get(version_id)  # no lock on the hot path: a dict read is atomic
        if seen is not None and now - seen[0] < ttl:
            return seen[1], seen[2]
        with _seen_lock:
            seen = _seen.get(version_id)
            if seen is not None:
                if now - seen[0] < ttl:
                    return seen[1], seen[2]
                # Stale: this thread re-reads; the others keep the old view meanwhile, so a
                # busy process asks once per period, not once per waiting thread.
                _seen[version_id] = (now, seen[1], seen[2])
        got = cache.get_many([self._key(version_id, p) for p in ("opened", "fails")])
        opened = got.get(self._key(version_id, "opened"))
        fails = int(got.get(self._key(version_id, "fails")) or 0)
        self._remember(version_id, None if opened is None else float(opened), fails)
        return (None if opened is None else float(opened)), fails

    @staticmethod
    def _remember(version_id: int, opened: float | None, fails: int) -> None:
        with _seen_lock:
            _seen[version_id] = (time.monotonic(), opened, fails)

    def state(self, version_id: int) -> str:
        opened = self._read(version_id)[0]
        if opened is None:
            return self.CLOSED
        return self.OPEN if self.clock() - opened < self.cooldown else self.HALF_OPEN

    def cooldown_left(self, version_id: int) -> float:
        """Seconds until the circuit half-opens (0 when it is closed or half-open)."""
        opened = self._read(version_id)[0]
        return 0.0 if opened is None else max(0.0, opened + self.cooldown - self.clock())

    def reason(self, version_id: int) -> str | None:
        """The outcome that opened the circuit (``callers``: failures of several callers)."""
        value = cache.get(self._key(version_id, "reason"))
        return None if value is None else str(value)

    def allow(self, version_id: int) -> bool:
        state = self.state(version_id)
        if state == self.CLOSED:
            return True
        if state == self.OPEN:
            return False
        # Half-open: cache.add is atomic, so exactly one request across processes probes.
        return bool(cache.add(self._key(version_id, "probe"), 1, timeout=max(1, self.cooldown)))

    def record(
        self,
        version_id: int,
        *,
        ok: bool,
        outcome: str | None = None,
        caller: str | None = None,
    ) -> str:
        """Count an outcome; the state after it. A failure's ``outcome`` is one of
        :mod:`inference.rules.outcome_kinds`'; without one it is the version's own (a remote
        upstream's breaker counts only those). ``caller``: who sent the request (a tenant)."""
        if ok:
            opened, fails = self._read(version_id)
            if opened is not None or fails:
                self.reset(version_id)
            return self.CLOSED
        kind = outcome or outcome_kinds.ENGINE_ERROR
        if kind == outcome_kinds.UNAVAILABLE:
            # Nothing served it: no evidence either way, and a probe that got this frees
            # the probe for the next request.
            cache.delete(self._key(version_id, "probe"))
            return self.state(version_id)
        fails, own, callers = self._count(
            version_id, own=kind in outcome_kinds.FAILURES, caller=caller
        )
        if own >= self.failures or (fails >= self.failures and callers >= self.callers):
            # A failed probe or a straggler while open extends it: nothing succeeded since.
            self._open(version_id, kind if own >= self.failures else "callers")
            return self.OPEN
        self._remember(version_id, self._read(version_id)[0], fails)
        if self.state(version_id) != self.CLOSED:
            cache.delete(self._key(version_id, "probe"))  # the probe proved nothing: another
        return self.state(version_id)

    def reset(self, version_id: int) -> None:
        """Close the circuit and forget its failures."""
        cache.delete_many([self._key(version_id, p) for p in self.PARTS])
        self._remember(version_id, None, 0)

    def _count(self, version_id: int, *, own: bool, caller: str | None) -> tuple[int, int, int]:
        """Count one failure atomically: (failures in a row, the version's own in a row,
        distinct failing callers), all since the last success."""
        backend = caches["default"]
        fails, vfails, callers = (self._key(version_id, p) for p in ("fails", "vfails", "callers"))
        if isinstance(backend, RedisCache):
            names = [backend.make_key(name) for name in (fails, vfails, callers)]
            pipe = backend._cache.get_client(names[0], write=True).pipeline(transaction=True)  # type: ignore[attr-defined]
            pipe.incr(names[0])
            pipe.incrby(names[1], 1 if own else 0)
            if caller is not None:
                pipe.sadd(names[2], caller)
            pipe.scard(names[2])
            got = pipe.execute()
            return int(got[0]), int(got[1]), int(got[-1])
        with _count_lock:  # a cache of this process only (LocMem): a lock makes it atomic
            counted = backend.get_many([fails, vfails, callers])
            seen = set(counted.get(callers) or ()) | ({caller} if caller is not None else set())
            values = (int(counted.get(fails) or 0) + 1, int(counted.get(vfails) or 0) + own)
            backend.set_many({fails: values[0], vfails: values[1], callers: seen}, timeout=None)
        return values[0], values[1], len(seen)

    def _open(self, version_id: int, reason: str) -> None:
        opened = self.clock()
        cache.set_many(
            {self._key(version_id, "opened"): opened, self._key(version_id, "reason"): reason},
            timeout=None,
        )
        cache.delete(self._key(version_id, "probe"))
        self._remember(version_id, opened, 0)


# version id -> (read at, monotonic; opened at; consecutive failures): this process's view.
_seen: dict[int, tuple[float, float | None, int]] = {}
_seen_lock = threading.Lock()
_count_lock = threading.Lock()


def forget_breakers() -> None:
    """Drop this process's view of every circuit (tests; the next read asks the cache)."""
    with _seen_lock:
        _seen.clear()
