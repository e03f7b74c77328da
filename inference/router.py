"""Which version answers a request: weighted canary, per-tenant stickiness, shadow copies and a
circuit breaker per version.

The router works on :class:`Candidate` values (no ORM), so it is cheap to test statistically.
Breaker state is kept in Django's cache (Redis in production), shared by every web process.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache


@dataclass(frozen=True)
class Candidate:
    id: int
    version: str
    weight: int
    stable: bool = False
    shadow: bool = False
    unavailable: str | None = None  # the reason, when the engine cannot serve it


class NoRoute(Exception):
    """No version can take the request; the message says why."""


class NotServed(NoRoute):
    """The request pins a version the model does not serve: the request's fault, not an
    outage (answered 422 naming ``version``)."""


@dataclass(frozen=True)
class Route:
    primary: Candidate
    shadows: tuple[Candidate, ...] = ()
    failed_over_from: Candidate | None = None


def sticky_point(tenant_key: str, model: str) -> float:
    """A tenant's fixed point in [0, 1) for this model: the same tenant lands on the same
    version while the weights stay the same, and tenants spread by the weights."""
    digest = hashlib.sha256(f"{model}:{tenant_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def weighted_pick(candidates: Sequence[Candidate], point: float) -> Candidate:
    """The candidate whose share of the total weight contains ``point`` (0 ≤ point < 1)."""
    total = sum(c.weight for c in candidates)
    edge = point * total
    running = 0
    for candidate in candidates:
        running += candidate.weight
        if edge < running:
            return candidate
    return candidates[-1]


def route(
    model: str,
    candidates: Sequence[Candidate],
    *,
    version: str | None = None,
    sticky_key: str | None = None,
    rng: Callable[[], float] = random.random,
    breaker: CircuitBreaker | None = None,
) -> Route:
    """Pick the version for one request.

    ``version`` pins a version (no canary, no failover). Otherwise a version is drawn by weight
    among serving versions (sticky per ``sticky_key`` when given); if its circuit is open, the
    request fails over to the stable version.
    """
    breaker = breaker or CircuitBreaker()
    shadows = tuple(c for c in candidates if c.shadow and not c.unavailable)
    if version is not None:
        pinned = next((c for c in candidates if c.version == version), None)
        if pinned is None:
            raise NotServed(f"{model} has no active version {version}.")
        if pinned.unavailable:
            raise NoRoute(pinned.unavailable)
        if not breaker.allow(pinned.id):
            raise NoRoute(f"version {version} is failing (circuit open)")
        return Route(primary=pinned, shadows=shadows)
    serving = [c for c in candidates if not c.shadow and c.weight > 0 and not c.unavailable]
    if not serving:
        reasons = sorted({c.unavailable for c in candidates if c.unavailable})
        raise NoRoute("; ".join(reasons) or f"{model} has no version taking traffic")
    point = sticky_point(sticky_key, model) if sticky_key is not None else rng()
    chosen = weighted_pick(serving, point)
    if breaker.allow(chosen.id):
        return Route(primary=chosen, shadows=shadows)
    stable = next((c for c in candidates if c.stable and not c.unavailable), None)
    if stable is not None and stable.id != chosen.id and breaker.allow(stable.id):
        return Route(primary=stable, shadows=shadows, failed_over_from=chosen)
    raise NoRoute(f"version {chosen.version} is failing (circuit open) and no stable fallback")


class CircuitBreaker:
    """closed → (``failures`` consecutive failures) → open → (``cooldown`` seconds) →
    half-open: one probe request passes; its success closes the circuit, its failure opens it
    again for another cooldown.

    State per version in the cache: ``cb:<id>:fails`` (consecutive failures), ``cb:<id>:opened``
    (when it opened; absent = closed) and ``cb:<id>:probe`` (a half-open probe is in flight).

    Every request reads the state and records its outcome, so each process keeps what it last
    read or wrote for ``INFERENCE_ROUTING_CACHE_SECONDS`` (:data:`_seen`): a healthy version
    costs no cache round trip at all, and a circuit opened by another process is seen here
    within that time. Writes (a failure, the first success after failures) always go to the
    shared cache; the half-open probe is still claimed with an atomic ``cache.add``.
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(
        self,
        *,
        failures: int | None = None,
        cooldown: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.failures = failures or settings.INFERENCE_BREAKER_FAILURES
        self.cooldown = (
            cooldown if cooldown is not None else settings.INFERENCE_BREAKER_COOLDOWN_SECONDS
        )
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

    def allow(self, version_id: int) -> bool:
        state = self.state(version_id)
        if state == self.CLOSED:
            return True
        if state == self.OPEN:
            return False
        # Half-open: cache.add is atomic, so exactly one request across processes probes.
        return bool(cache.add(self._key(version_id, "probe"), 1, timeout=max(1, self.cooldown)))

    def record(self, version_id: int, *, ok: bool) -> str:
        """Count an outcome; the state after it."""
        if ok:
            opened, fails = self._read(version_id)
            if opened is not None or fails:
                cache.delete_many([self._key(version_id, p) for p in ("fails", "opened", "probe")])
                self._remember(version_id, None, 0)
            return self.CLOSED
        if self.state(version_id) != self.CLOSED:
            # A failed probe (or a straggler while open): open for another cooldown.
            self._open(version_id)
            return self.OPEN
        fails_key = self._key(version_id, "fails")
        cache.add(fails_key, 0, timeout=None)
        try:
            fails = cache.incr(fails_key)
        except ValueError:  # evicted between add and incr
            cache.set(fails_key, 1, timeout=None)
            fails = 1
        if fails >= self.failures:
            self._open(version_id)
            return self.OPEN
        self._remember(version_id, None, fails)
        return self.CLOSED

    def _open(self, version_id: int) -> None:
        opened = self.clock()
        cache.set(self._key(version_id, "opened"), opened, timeout=None)
        cache.delete_many([self._key(version_id, p) for p in ("fails", "probe")])
        self._remember(version_id, opened, 0)


# version id -> (read at, monotonic; opened at; consecutive failures): this process's view.
_seen: dict[int, tuple[float, float | None, int]] = {}
_seen_lock = threading.Lock()


def forget_breakers() -> None:
    """Drop this process's view of every circuit (tests; the next read asks the cache)."""
    with _seen_lock:
        _seen.clear()
