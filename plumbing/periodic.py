"""One background thread per process that runs a function every few seconds: the in-process
flushers and watchers (version health, shadow comparisons, the canary judge). The thread
outlives a failed run (logged; the next run retries); a forked child (gunicorn's workers)
starts its own, since threads do not survive ``fork``."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """``fn`` every ``seconds`` (a number, or a callable read before each wait) on a daemon
    thread named ``name``, from the first :meth:`start` in each process. ``started`` is a
    plain flag (reset in a forked child), cheap to read on a hot path."""

    def __init__(self, name: str, seconds: float | Callable[[], float], fn: Callable[[], object]):
        self.name = name
        self.seconds = seconds
        self.fn = fn
        self.started = False
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forked)

    def start(self) -> None:
        with self._lock:
            if self.started:
                return
            self.started = True
        threading.Thread(target=self._forever, name=self.name, daemon=True).start()

    def run_once(self) -> None:
        """Run ``fn`` now; a failure is logged, never raised."""
        try:
            self.fn()
        except Exception:  # the thread outlives one bad run; the next one retries
            log.exception("%s: a run failed", self.name)

    def _forever(self) -> None:
        while True:
            time.sleep(self.seconds() if callable(self.seconds) else self.seconds)
            self.run_once()

    def _forked(self) -> None:
        self.started = False
        self._lock = threading.Lock()
