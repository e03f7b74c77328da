from __future__ import annotations

import random
from collections import Counter

import pytest

from inference.catalog.router import (
    Candidate,
    NoRoute,
    NotServed,
    route,
    sticky_point,
)
from inference.rules.breaker import CircuitBreaker

pytestmark = pytest.mark.django_db  # the breaker keeps its state in the cache

STABLE = Candidate(id=1, version="1", weight=90, stable=True)
CANARY = Candidate(id=2, version="2", weight=10)


class Closed:
    """A breaker that always allows: the statistical tests draw tens of thousands of routes
    and measure weights, not cache round trips."""

    def allow(self, version_id: int) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_it_splits_traffic_by_weight() -> None:
    rng = random.Random(7)
    n = 20_000
    picks = Counter(
        route("m", [STABLE, CANARY], rng=rng.random, breaker=Closed()).primary.version
        for _ in range(n)
    )
    # 10% canary: the binomial standard deviation at n=20k is 0.2%; allow 5 sigma.
    assert abs(picks["2"] / n - 0.10) < 0.011
    assert picks["1"] + picks["2"] == n


def test_it_splits_three_ways_by_relative_weight() -> None:
    rng = random.Random(11)
    cands = [
        Candidate(id=1, version="a", weight=50, stable=True),
        Candidate(id=2, version="b", weight=30),
        Candidate(id=3, version="c", weight=20),
    ]
    n = 30_000
    picks = Counter(
        route("m", cands, rng=rng.random, breaker=Closed()).primary.version for _ in range(n)
    )
    for label, share in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert abs(picks[label] / n - share) < 0.015


def test_it_never_sends_traffic_to_weight_zero_or_shadow_versions() -> None:
    cands = [
        STABLE,
        Candidate(id=2, version="2", weight=0),
        Candidate(id=3, version="3", weight=50, shadow=True),
    ]
    rng = random.Random(1)
    picks = {route("m", cands, rng=rng.random).primary.version for _ in range(2_000)}
    assert picks == {"1"}


def test_it_sends_a_copy_to_shadow_versions() -> None:
    shadow = Candidate(id=3, version="3", weight=0, shadow=True)
    plan = route("m", [STABLE, shadow])
    assert plan.primary == STABLE and plan.shadows == (shadow,)


def test_it_keeps_a_tenant_on_one_version_when_sticky() -> None:
    seen = {route("m", [STABLE, CANARY], sticky_key="tenant-42").primary.version for _ in range(50)}
    assert len(seen) == 1


def test_it_spreads_sticky_tenants_by_weight() -> None:
    n = 10_000
    picks = Counter(
        route("m", [STABLE, CANARY], sticky_key=f"t{i}", breaker=Closed()).primary.version
        for i in range(n)
    )
    assert abs(picks["2"] / n - 0.10) < 0.015
    assert 0 <= sticky_point("t1", "m") < 1


def test_it_pins_a_requested_version() -> None:
    assert route("m", [STABLE, CANARY], version="2").primary == CANARY
    with pytest.raises(NotServed, match="no active version 9"):
        route("m", [STABLE, CANARY], version="9")


def test_it_skips_unavailable_versions_and_says_why() -> None:
    broken = Candidate(id=2, version="2", weight=100, unavailable="unavailable: no engine")
    assert route("m", [STABLE, broken], rng=lambda: 0.99).primary == STABLE
    with pytest.raises(NoRoute, match="unavailable: no engine"):
        route("m", [broken])


def test_it_moves_the_breaker_closed_open_half_open_closed() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, cooldown=30, clock=clock)
    assert breaker.state(2) == "closed"
    assert breaker.record(2, ok=False) == "closed"
    assert breaker.record(2, ok=False) == "closed"
    assert breaker.record(2, ok=False) == "open"
    assert breaker.allow(2) is False
    clock.now += 31
    assert breaker.state(2) == "half_open"
    assert breaker.allow(2) is True  # the one probe
    assert breaker.allow(2) is False  # everyone else waits for its outcome
    assert breaker.record(2, ok=True) == "closed"
    assert breaker.allow(2) is True


def test_it_reopens_the_breaker_when_the_probe_fails() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cooldown=10, clock=clock)
    breaker.record(2, ok=False)
    clock.now += 11
    assert breaker.allow(2) is True
    assert breaker.record(2, ok=False) == "open"
    assert breaker.allow(2) is False
    clock.now += 5
    assert breaker.state(2) == "open"  # a fresh cooldown from the failed probe
    clock.now += 6
    assert breaker.state(2) == "half_open"


def test_it_resets_the_failure_count_on_success() -> None:
    breaker = CircuitBreaker(failures=2, cooldown=10)
    breaker.record(2, ok=False)
    breaker.record(2, ok=True)
    assert breaker.record(2, ok=False) == "closed"


def test_it_fails_over_to_the_stable_version_when_the_canary_circuit_is_open() -> None:
    breaker = CircuitBreaker(failures=1, cooldown=60)
    breaker.record(CANARY.id, ok=False)
    plan = route("m", [STABLE, CANARY], rng=lambda: 0.95, breaker=breaker)  # draws the canary
    assert plan.primary == STABLE and plan.failed_over_from == CANARY


def test_it_refuses_when_the_stable_circuit_is_open_too() -> None:
    breaker = CircuitBreaker(failures=1, cooldown=60)
    breaker.record(STABLE.id, ok=False)
    with pytest.raises(NoRoute, match="circuit open"):
        route("m", [STABLE, CANARY], rng=lambda: 0.0, breaker=breaker)


# --- the breaker measures the engine, not a caller ----------------------------------------------


def test_one_callers_inputs_never_open_the_circuit() -> None:
    breaker = CircuitBreaker(failures=3, cooldown=60, callers=2)
    for _ in range(50):
        assert breaker.record(2, ok=False, outcome="input_error", caller="tenant-a") == "closed"
    assert breaker.allow(2)


def test_failures_from_several_callers_open_it_within_the_configured_failures() -> None:
    breaker = CircuitBreaker(failures=3, cooldown=60, callers=2)
    assert breaker.record(2, ok=False, outcome="input_error", caller="a") == "closed"
    assert breaker.record(2, ok=False, outcome="input_error", caller="b") == "closed"
    assert breaker.record(2, ok=False, outcome="input_error", caller="a") == "open"
    assert breaker.reason(2) == "callers"


def test_the_versions_own_failures_open_it_whoever_sent_the_requests() -> None:
    breaker = CircuitBreaker(failures=3, cooldown=60, callers=2)
    for outcome in ("timeout", "engine_error"):
        assert breaker.record(2, ok=False, outcome=outcome, caller="a") == "closed"
    assert breaker.record(2, ok=False, outcome="worker_lost", caller="a") == "open"
    assert breaker.reason(2) == "worker_lost"


def test_a_success_forgets_the_failing_callers() -> None:
    breaker = CircuitBreaker(failures=2, cooldown=60, callers=2)
    breaker.record(2, ok=False, outcome="input_error", caller="a")
    breaker.record(2, ok=True)
    breaker.record(2, ok=False, outcome="input_error", caller="b")
    assert breaker.record(2, ok=False, outcome="input_error", caller="b") == "closed"


def test_requests_no_worker_took_are_not_counted_and_free_the_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=2, cooldown=10, clock=clock)
    for _ in range(10):
        assert breaker.record(2, ok=False, outcome="unavailable", caller="a") == "closed"
    breaker.record(2, ok=False, outcome="timeout")
    breaker.record(2, ok=False, outcome="timeout")
    clock.now += 11
    assert breaker.allow(2) is True and breaker.allow(2) is False  # one probe at a time
    assert breaker.record(2, ok=False, outcome="unavailable") == "half_open"
    assert breaker.allow(2) is True  # the probe proved nothing: the next request probes


def test_a_refusal_says_how_long_the_cooldown_has_left() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cooldown=30, clock=clock)
    breaker.record(CANARY.id, ok=False)
    clock.now += 12
    with pytest.raises(NoRoute) as caught:
        route("m", [STABLE, CANARY], version="2", breaker=breaker)
    assert caught.value.retry_after == pytest.approx(18)
    breaker.record(STABLE.id, ok=False)
    clock.now += 5
    with pytest.raises(NoRoute, match="no stable fallback") as caught:
        route("m", [STABLE, CANARY], rng=lambda: 0.95, breaker=breaker)
    assert caught.value.retry_after == pytest.approx(13)  # the canary half-opens first
