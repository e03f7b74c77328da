"""plumbing.periodic: one background thread per process, outliving failed runs."""

from __future__ import annotations

import os
import threading
import time

from plumbing.periodic import Periodic


def _wait_for(check, timeout: float = 5.0) -> None:
    give_up = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < give_up, "timed out"
        time.sleep(0.01)


def test_it_runs_on_one_thread_however_often_started_and_outlives_failures(caplog) -> None:
    runs: list[str] = []

    def fn() -> None:
        runs.append(threading.current_thread().name)
        if len(runs) == 1:
            raise RuntimeError("the first run fails")

    job = Periodic("test-periodic", 0.01, fn)
    for _ in range(3):
        job.start()
    _wait_for(lambda: len(runs) >= 3)
    assert set(runs) == {"test-periodic"}
    assert [t.name for t in threading.enumerate()].count("test-periodic") == 1
    assert "test-periodic: a run failed" in caplog.text


def test_a_forked_child_starts_its_own() -> None:
    job = Periodic("test-periodic-fork", 0.01, lambda: None)
    job.start()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread is not here, and start() makes one
        code = 1
        try:
            if not job.started:
                job.start()
                code = 0 if job.started else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"\x00"
    assert job.started
