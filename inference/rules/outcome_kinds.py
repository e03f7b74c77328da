"""What a request's end means to a version's health and its circuit breaker: the outcome
names that :mod:`inference.catalog.version_health` records and
:mod:`inference.rules.breaker` counts (docs/inference.md, "The circuit breaker")."""

from __future__ import annotations

OK = "ok"
INPUT_ERROR = "input_error"
ENGINE_ERROR = "engine_error"
TIMEOUT = "timeout"
WORKER_LOST = "worker_lost"
UNAVAILABLE = "unavailable"
OUTCOMES = frozenset({OK, INPUT_ERROR, ENGINE_ERROR, TIMEOUT, WORKER_LOST, UNAVAILABLE})
# Outcomes that say the version itself is unhealthy, whoever sent the request.
FAILURES = frozenset({ENGINE_ERROR, TIMEOUT, WORKER_LOST})
# What a window counts as requests: not ``unavailable`` (the version never ran them).
COUNTED = frozenset({OK, INPUT_ERROR, *FAILURES})
