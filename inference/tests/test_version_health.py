"""Per-version health stats: in-process recording, flushed to the shared cache (LocMem on the
embedded pass, Redis on the PostgreSQL + Redis pass), read back as windows."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache

from inference.catalog import version_health
from inference.catalog.version_health import flush, record, window, windows
from testing.processes import ROOT


def test_it_counts_outcomes_only_once_flushed() -> None:
    record(7, outcome="ok", latency_ms=12, caller="1")
    assert window(7, 60).requests == 0  # in this process's buffer: no round trip per request
    flush()
    assert window(7, 60).requests == 1


def test_it_separates_version_failures_from_input_failures_and_outages() -> None:
    for outcome in ("ok", "ok", "input_error", "engine_error", "timeout", "worker_lost"):
        record(7, outcome=outcome, latency_ms=5 if outcome == "ok" else None, caller="1")
    record(7, outcome="unavailable", latency_ms=None, caller="1")  # never reached the version
    flush()
    got = window(7, 60)
    assert (got.requests, got.failures, got.input_failures) == (6, 3, 1)
    assert got.error_rate == pytest.approx(4 / 6)


def test_an_empty_window_has_no_error_rate_and_no_p99() -> None:
    got = window(8, 60)
    assert (got.requests, got.error_rate, got.p99_ms, got.last_error) == (0, 0.0, None, None)


def test_it_computes_the_p99_of_successful_requests() -> None:
    for ms in range(1, 101):  # 1..100 ms, one request each
        record(7, outcome="ok", latency_ms=ms, caller="1")
    record(7, outcome="timeout", latency_ms=10_000, caller="1")  # not a latency of the model
    flush()
    p99 = window(7, 60).p99_ms
    assert p99 is not None and 97 <= p99 <= 100


def test_it_counts_distinct_failing_callers() -> None:
    for caller in ("a", "a", "a", "b"):
        record(7, outcome="input_error", latency_ms=None, caller=caller)
    record(7, outcome="ok", latency_ms=1, caller="c")  # succeeded: not a failing caller
    flush()
    record(7, outcome="engine_error", latency_ms=None, caller="b")  # a later flush, same caller
    flush()
    assert window(7, 60).failing_callers == 2


def test_it_keeps_the_newest_error_across_flushes(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1_000_000.0]
    monkeypatch.setattr(version_health.time, "time", lambda: clock[0])
    record(7, outcome="engine_error", latency_ms=None, caller="1", error="KeyError: 'X'")
    flush()
    clock[0] += 2
    record(7, outcome="input_error", latency_ms=None, caller="1", error="IndexError: boom")
    flush()
    got = window(7, 60)
    assert (got.last_error, got.last_error_at) == ("IndexError: boom", 1_000_002.0)
    assert got.last_error_outcome == "input_error"


def test_it_forgets_outcomes_older_than_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1_000_000.0]
    monkeypatch.setattr(version_health.time, "time", lambda: clock[0])
    record(7, outcome="engine_error", latency_ms=None, caller="1")
    flush()
    clock[0] += 120
    record(7, outcome="ok", latency_ms=3, caller="1")
    flush()
    assert (window(7, 60).requests, window(7, 60).failures) == (1, 0)
    assert (window(7, 300).requests, window(7, 300).failures) == (2, 1)


def test_it_reads_several_versions_at_once() -> None:
    record(7, outcome="ok", latency_ms=1, caller="1")
    record(9, outcome="engine_error", latency_ms=None, caller="1")
    flush()
    got = windows([7, 9], 60)
    assert (got[7].requests, got[7].failures, got[9].failures) == (1, 0, 1)


def test_it_refuses_an_unknown_outcome() -> None:
    with pytest.raises(ValueError, match="unknown outcome"):
        record(7, outcome="meh", latency_ms=None, caller=None)


def test_its_flusher_thread_writes_within_about_a_second() -> None:
    import time

    record(11, outcome="ok", latency_ms=1, caller="1")
    give_up = time.monotonic() + 5
    while window(11, 60).requests == 0:
        assert time.monotonic() < give_up, "the flusher never flushed"
        time.sleep(0.1)


@pytest.mark.redis
@pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (PostgreSQL + Redis pass)")
def test_it_sums_the_outcomes_of_several_processes() -> None:
    """Another process (its own buffer and flusher) records into the same Redis prefix."""
    prefix = cache.key_prefix  # type: ignore[attr-defined]  # this test's own namespace
    script = (
        "from inference.catalog.version_health import record, flush\n"
        "for _ in range(3): record(7, outcome='engine_error', latency_ms=None, caller='other',"
        " error='from the other process')\n"
        "flush()\n"
    )
    env: dict[str, Any] = {
        **__import__("os").environ,
        "REDIS_URL": settings.REDIS_URL,
        "REDIS_KEY_PREFIX": prefix,
        "DEBUG": "true",
    }
    record(7, outcome="ok", latency_ms=4, caller="here")
    flush()
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=60,
    )
    got = window(7, 60)
    assert (got.requests, got.failures, got.failing_callers) == (4, 3, 1)
    assert got.last_error == "from the other process"
