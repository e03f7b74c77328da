"""The credential watch: each credential re-verified on its own schedule, once however many
connections hold it; the holders of one that fails are told, the others are not."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from rest_framework import exceptions

from streaming.credentials import CredentialWatch


class Keys:
    """A fake verifier: counts checks per credential; ``revoked`` ones fail."""

    def __init__(self) -> None:
        self.checks: Counter[str] = Counter()
        self.revoked: set[str] = set()
        self.down = False

    def __call__(self, credential: str) -> None:
        self.checks[credential] += 1
        if self.down:
            raise OSError("the database is unreachable")
        if credential in self.revoked:
            raise exceptions.AuthenticationFailed("API key has been revoked.")


@pytest.fixture
def often(settings):
    settings.WS_REAUTH_SECONDS = 0.05


def _wait_for(check, timeout: float = 3.0) -> None:
    give_up = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < give_up, "timed out"
        time.sleep(0.01)


def test_it_checks_a_credential_once_per_round_however_many_hold_it(often) -> None:
    keys = Keys()
    watch = CredentialWatch(keys)
    many = [watch.bind("shared") for _ in range(1000)]
    watch.bind("alone")
    time.sleep(0.4)
    # Rounds every 50 ms: about eight checks each, not one per connection.
    assert 3 <= keys.checks["shared"] <= 12
    assert abs(keys.checks["shared"] - keys.checks["alone"]) <= 2
    assert not any(binding.lost for binding in many)


def test_the_holders_of_a_failing_credential_are_told_and_no_others(often) -> None:
    keys = Keys()
    watch = CredentialWatch(keys)
    told: list[str] = []
    lock = threading.Lock()

    def on_lost(name: str):
        def call() -> None:
            with lock:
                told.append(name)

        return call

    revoked = [watch.bind("k1", on_lost(f"k1-{i}")) for i in range(3)]
    kept = watch.bind("k2", on_lost("k2"))
    keys.revoked.add("k1")
    _wait_for(lambda: len(told) == 3)
    assert sorted(told) == ["k1-0", "k1-1", "k1-2"]
    assert all(binding.lost for binding in revoked) and not kept.lost
    checked = keys.checks["k1"]
    time.sleep(0.2)
    assert keys.checks["k1"] == checked  # no holders left: no more checks
    assert len(told) == 3 and not kept.lost


def test_an_unbound_credential_is_no_longer_checked(often) -> None:
    keys = Keys()
    watch = CredentialWatch(keys)
    binding = watch.bind("k1")
    _wait_for(lambda: keys.checks["k1"] >= 1)
    watch.unbind(binding)
    time.sleep(0.1)  # a check already under way may finish
    checked = keys.checks["k1"]
    time.sleep(0.2)
    assert keys.checks["k1"] == checked


def test_a_check_that_cannot_reach_the_database_keeps_the_connections(often) -> None:
    keys = Keys()
    keys.down = True
    watch = CredentialWatch(keys)
    binding = watch.bind("k1")
    _wait_for(lambda: keys.checks["k1"] >= 3)
    assert not binding.lost
    keys.down = False
    keys.revoked.add("k1")
    _wait_for(lambda: binding.lost)


def test_a_credential_is_first_checked_one_interval_after_it_is_bound(settings) -> None:
    settings.WS_REAUTH_SECONDS = 0.3
    keys = Keys()
    watch = CredentialWatch(keys)
    watch.bind("k1")
    time.sleep(0.15)
    assert keys.checks["k1"] == 0
    _wait_for(lambda: keys.checks["k1"] == 1, timeout=1)
