"""Concurrent-stream slots are leases: a holder that dies stops renewing and its slots lapse."""

from __future__ import annotations

import uuid

import pytest
from django.conf import settings

from streaming.services import LeaseKeeper, SlotStore


@pytest.fixture(params=["memory", "redis"])
def clock_and_store(request):
    now = [1_000_000.0]
    if request.param == "redis" and not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL (PostgreSQL + Redis pass)")
    url = settings.REDIS_URL if request.param == "redis" else None
    prefix = f"{settings.REDIS_KEY_PREFIX}:slots{uuid.uuid4().hex[:8]}"
    return now, SlotStore(url, prefix, lease_seconds=90, clock=lambda: now[0])


def test_it_refuses_past_the_limit_and_frees_on_release(clock_and_store):
    _, store = clock_and_store
    first, second = store.take(1, 2), store.take(1, 2)
    assert first and second and first.slot != second.slot
    assert store.take(1, 2) is None
    assert store.take(2, 2) is not None  # another tenant's slots are its own
    store.release(first)
    assert store.held(1) == 1
    assert store.take(1, 2) is not None


def test_a_crashed_holders_slots_lapse(clock_and_store):
    now, store = clock_and_store
    crashed = LeaseKeeper(store)  # a process that takes slots, then dies without releasing
    for _ in range(3):
        crashed.hold(store.take(7, 3))
    assert store.take(7, 3) is None
    now[0] += 89
    assert store.take(7, 3) is None  # not yet
    now[0] += 2
    assert store.held(7) == 0
    assert store.total() == 0
    assert store.take(7, 3) is not None
    assert store.total() == 1


def test_renewed_leases_outlive_the_lease_time(clock_and_store):
    now, store = clock_and_store
    alive = LeaseKeeper(store)
    lease = store.take(9, 1)
    alive.hold(lease)
    for _ in range(5):  # a live holder renews every third of the lease time
        now[0] += 30
        alive.renew_now()
    assert store.take(9, 1) is None
    alive.drop(lease)
    now[0] += 91  # dropped from the keeper: no more renewals, it lapses
    assert store.take(9, 1) is not None
