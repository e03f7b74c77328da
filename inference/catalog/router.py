"""Which version answers a request: weighted canary, per-tenant stickiness, shadow copies, and
past a version whose circuit is open (:mod:`inference.rules.breaker`).

The router works on :class:`Candidate` values (no ORM), so it is cheap to test statistically.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from inference.rules.breaker import CircuitBreaker


@dataclass(frozen=True)
class Candidate:
    id: int
    version: str
    weight: int
    stable: bool = False
    shadow: bool = False
    unavailable: str | None = None  # the reason, when the engine cannot serve it


class NoRoute(Exception):
    """No version can take the request; the message says why, ``retry_after`` (seconds) when
    the reason is a circuit's cooldown."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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
            raise NoRoute(
                f"version {version} is failing (circuit open)",
                retry_after=breaker.cooldown_left(pinned.id),
            )
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
    # Served again when the first of the two circuits half-opens.
    waits = [breaker.cooldown_left(c.id) for c in (chosen, stable) if c is not None]
    raise NoRoute(
        f"version {chosen.version} is failing (circuit open) and no stable fallback",
        retry_after=min(waits),
    )
