"""Shadow versions report: each shadow's answer is compared with the primary's, per request.

The web process that served a request pairs the two answers. It has the primary's (the
request's own reply) and asks for the shadow's on its own reply list: the shadow copy goes out
with that list as its ``reply_to`` and the copy's id as its batch id, so the worker answers it
like any batch (:mod:`inference.transport.replies`), and the inbox calls :func:`_shadow_answered` —
on the reader thread — when the answer comes, or once the copy's deadline has passed without
one. Whichever side arrives second completes the pair. Nothing of this runs for a model
without a shadow, and nothing waits for a shadow: the primary's answer goes to the client
at once.

The shadow's answer is also its health (:mod:`inference.catalog.version_health`: outcome, latency,
last error), shown for it where every version's is. A completed pair is compared output by
output (:func:`compare`): labels (strings, integers, booleans, anything that is not a number
or a list of numbers) agree or not; numbers (floats, lists of numbers of the same shape) add
their absolute differences; an output missing on one side or of another shape is a mismatch.
The worker's time for each answer is kept too. The counts
gather in the process and a background thread adds them to the shared cache (Redis; the
process's cache embedded) about once a second, and to the Prometheus metrics
``sluice_shadow_*``; :func:`report` reads them back for the admin, summed over every process
since the version last became a shadow (:func:`reset`).
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from redis.exceptions import RedisError

from inference.catalog import version_health
from inference.catalog.selectors import VersionRoute
from inference.rules import outcome_kinds
from inference.transport import dispatch
from inference.transport.replies import Waiter, inbox
from plumbing.metrics import (
    SHADOW_ABS_DIFF,
    SHADOW_AGREED,
    SHADOW_COMPARED,
    SHADOW_LATENCY,
    SHADOW_REQUESTS,
)
from plumbing.periodic import Periodic

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
# How long after its deadline a copy's answer is still taken (it left the worker in time).
LATE_SECONDS = 2.0
# Outputs compared per shadow at most (their names label metrics and hash fields).
MAX_OUTPUTS = 32

# --- pairing ---------------------------------------------------------------------------------


@dataclass
class _Pair:
    model: str
    shadow: VersionRoute
    primary_reply: dict[str, Any] | None = None
    shadow_reply: dict[str, Any] | None = None
    primary_done: bool = False
    shadow_done: bool = False


_pairs: dict[str, _Pair] = {}
_pairs_lock = threading.Lock()


def send(
    model: str, shadows: Sequence[VersionRoute], payload: dict[str, Any], deadline: float
) -> list[str]:
    """Copy the request to each shadow (best effort, as :func:`dispatch.shadow_copy`) and
    expect their answers; the copies' ids, for :func:`primary_answered`."""
    copies = expect(model, shadows, deadline)
    for shadow, rid in zip(shadows, copies, strict=True):
        send_copy(shadow, rid, payload, deadline)
    return copies


def expect(model: str, shadows: Sequence[VersionRoute], deadline: float) -> list[str]:
    """Make ready for each shadow's answer before its copy goes (the answer may come back at
    once); the copies' ids."""
    copies = []
    for shadow in shadows:
        rid = f"shadow-{uuid.uuid4().hex}"
        with _pairs_lock:
            _pairs[rid] = _Pair(model=model, shadow=shadow)
        waiter = inbox.expect(rid)
        inbox.expect_batch(
            rid, functools.partial(_shadow_answered, rid, waiter), deadline + LATE_SECONDS
        )
        copies.append(rid)
    return copies


def send_copy(shadow: VersionRoute, rid: str, payload: dict[str, Any], deadline: float) -> None:
    """One copy; a copy that could not go is counted as skipped (queue full, broker down)."""
    if dispatch.shadow_copy(shadow, payload, deadline, rid=rid, reply_to=inbox.address()):
        return
    with _pairs_lock:
        pair = _pairs.pop(rid, None)
    inbox.forget_batch(rid)  # its callback finds no pair now
    if pair is not None:
        with _tallies_lock:
            _tally(pair).skipped += 1


def primary_answered(copies: list[str], reply: dict[str, Any] | None) -> None:
    """The primary's reply (None: none before the deadline) for the request's copies."""
    for rid in copies:
        with _pairs_lock:
            pair = _pairs.get(rid)
            if pair is None:
                continue
            pair.primary_reply, pair.primary_done = reply, True
            if not pair.shadow_done:
                continue
            del _pairs[rid]
        _complete(pair)


def _complete(pair: _Pair) -> None:
    """Count a pair whose two sides are in; never fails the request whose thread does it."""
    try:
        _count(pair)
    except Exception:  # a comparison must never cost the client its answer
        log.exception("shadow comparison of %s:%s failed", pair.model, pair.shadow.version)


def _shadow_answered(rid: str, waiter: Waiter) -> None:
    """The inbox's callback: the shadow's answer came (``waiter.reply``), or its time ran out
    (None)."""
    inbox.forget(rid)
    with _pairs_lock:
        pair = _pairs.get(rid)
        if pair is None:  # its copy never went: counted as skipped
            return
        pair.shadow_reply, pair.shadow_done = waiter.reply, True
        if not pair.primary_done:
            return
        del _pairs[rid]
    _complete(pair)


def _count(pair: _Pair) -> None:
    shadow, primary = pair.shadow_reply, pair.primary_reply
    if shadow is not None:  # the shadow's own health, as its requests' would be
        ok = bool(shadow.get("ok"))
        outcome = outcome_kinds.OK if ok else shadow.get("outcome")
        version_health.record(
            pair.shadow.id,
            # A worker of another release may name none: the version's failure, as _conclude.
            outcome=outcome if outcome in outcome_kinds.OUTCOMES else outcome_kinds.ENGINE_ERROR,
            latency_ms=float(shadow.get("ms", 0.0)) if ok else None,
            caller=None,
            error=None if ok else str(shadow.get("internal") or shadow.get("error", "")),
        )
    compared = None
    if shadow is not None and shadow.get("ok") and primary is not None and primary.get("ok"):
        compared = compare(primary.get("output"), shadow.get("output"))
    with _tallies_lock:
        tally = _tally(pair)
        if shadow is None:
            tally.unanswered += 1
        elif not shadow.get("ok"):
            tally.shadow_errors += 1
        elif compared is not None and primary is not None:
            tally.pairs += 1
            tally.primary_ms.append(float(primary.get("ms", 0.0)))
            tally.shadow_ms.append(float(shadow.get("ms", 0.0)))
            for name, found in compared.items():
                tally.outputs.setdefault(name, Comparison()).add(found)
        # Else the primary failed: nothing to compare with (its failure is its own version's).


# --- comparing two answers -------------------------------------------------------------------


@dataclass
class Comparison:
    """One output's comparisons: labels that agreed, numbers' absolute differences,
    mismatches (missing on one side, another shape or kind)."""

    labels: int = 0
    agreed: int = 0
    values: int = 0
    abs_diff: float = 0.0
    mismatches: int = 0

    def add(self, other: Comparison) -> None:
        self.labels += other.labels
        self.agreed += other.agreed
        self.values += other.values
        self.abs_diff += other.abs_diff
        self.mismatches += other.mismatches


def _numbers(value: Any) -> list[float] | None:
    """The values of a number output: a float, or a (nested) list of numbers; None for a
    label (a string, an integer, a boolean, anything else)."""
    if isinstance(value, float):
        return [value]
    if not isinstance(value, list):
        return None
    leaves: list[float] = []
    for item in value:
        if isinstance(item, list):
            inner = _numbers(item)
            if inner is None:
                return None
            leaves.extend(inner)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            leaves.append(float(item))
        else:
            return None
    return leaves


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    return (len(value), *(_shape(value[0]) if value else ()))


def compare(primary: Any, shadow: Any) -> dict[str, Comparison]:
    """Output by output (at most ``MAX_OUTPUTS``): how the shadow's answer compares."""
    if not isinstance(primary, dict) or not isinstance(shadow, dict):
        return {"": Comparison(mismatches=1)}
    out: dict[str, Comparison] = {}
    for name in sorted(set(primary) | set(shadow))[:MAX_OUTPUTS]:
        if name not in primary or name not in shadow:
            out[name] = Comparison(mismatches=1)
            continue
        a, b = _numbers(primary[name]), _numbers(shadow[name])
        if a is None and b is None:
            out[name] = Comparison(labels=1, agreed=int(primary[name] == shadow[name]))
        elif (
            a is None
            or b is None
            or len(a) != len(b)
            or _shape(primary[name]) != _shape(shadow[name])
        ):
            out[name] = Comparison(mismatches=1)
        else:
            diff = sum(abs(x - y) for x, y in zip(a, b, strict=True))
            out[name] = Comparison(values=len(a), abs_diff=diff if math.isfinite(diff) else 0.0)
    return out


# --- counting, flushing, reading ---------------------------------------------------------------


@dataclass
class _Tally:
    """What this process counted for one shadow since its last flush."""

    model: str
    version: str
    pairs: int = 0
    shadow_errors: int = 0
    unanswered: int = 0
    skipped: int = 0
    primary_ms: list[float] = field(default_factory=list)
    shadow_ms: list[float] = field(default_factory=list)
    outputs: dict[str, Comparison] = field(default_factory=dict)


_tallies: dict[int, _Tally] = {}
_tallies_lock = threading.Lock()


def _tally(pair: _Pair) -> _Tally:
    """The pair's shadow's tally; the caller holds ``_tallies_lock`` while it counts (the
    flusher takes the tallies under it)."""
    found = _tallies.get(pair.shadow.id)
    if found is None:
        found = _tallies[pair.shadow.id] = _Tally(model=pair.model, version=pair.shadow.version)
    if not _flusher.started:
        _flusher.start()
    return found


def flush() -> None:
    """Add this process's counts to the shared cache and the metrics now (the flusher does
    it about once a second)."""
    with _tallies_lock:
        if not _tallies:
            return
        taken = dict(_tallies)
        _tallies.clear()
    backend = caches["default"]
    for version_id, tally in taken.items():
        _metrics(tally)
        fields: dict[str, float] = {
            "pairs": tally.pairs,
            "shadow_errors": tally.shadow_errors,
            "unanswered": tally.unanswered,
            "skipped": tally.skipped,
            "primary_ms": sum(tally.primary_ms),
            "shadow_ms": sum(tally.shadow_ms),
        }
        for name, found in tally.outputs.items():
            fields[f"o:{name}:labels"] = found.labels
            fields[f"o:{name}:agreed"] = found.agreed
            fields[f"o:{name}:values"] = found.values
            fields[f"o:{name}:abs_diff"] = found.abs_diff
            fields[f"o:{name}:mismatches"] = found.mismatches
        _add(backend, _name(version_id), {k: v for k, v in fields.items() if v})


def _metrics(tally: _Tally) -> None:
    labels = (tally.model, tally.version)
    for outcome, count in (
        ("compared", tally.pairs),
        ("shadow_error", tally.shadow_errors),
        ("unanswered", tally.unanswered),
        ("skipped", tally.skipped),
    ):
        if count:
            SHADOW_REQUESTS.labels(*labels, outcome).inc(count)
    for role, values in (("primary", tally.primary_ms), ("shadow", tally.shadow_ms)):
        histogram = SHADOW_LATENCY.labels(*labels, role)
        for ms in values:
            histogram.observe(ms / 1000)
    for name, found in tally.outputs.items():
        if found.labels:
            SHADOW_COMPARED.labels(*labels, name, "label").inc(found.labels)
            SHADOW_AGREED.labels(*labels, name).inc(found.agreed)
        if found.values:
            SHADOW_COMPARED.labels(*labels, name, "number").inc(found.values)
            SHADOW_ABS_DIFF.labels(*labels, name).inc(found.abs_diff)
        if found.mismatches:
            SHADOW_COMPARED.labels(*labels, name, "mismatch").inc(found.mismatches)


def _name(version_id: int) -> str:
    return f"inference:shadow:{version_id}"


# A cache that is not Redis (LocMem, embedded) lives in this process: a lock makes its
# read-modify-write atomic.
_local_lock = threading.Lock()


def _add(backend: Any, name: str, fields: dict[str, float]) -> None:
    if not fields:
        return
    if isinstance(backend, RedisCache):
        key = backend.make_key(name)
        pipe = backend._cache.get_client(write=True).pipeline(transaction=False)  # type: ignore[attr-defined]
        for field_name, amount in fields.items():
            if isinstance(amount, float):
                pipe.hincrbyfloat(key, field_name, amount)
            else:
                pipe.hincrby(key, field_name, amount)
        try:
            pipe.execute()
        except (RedisError, OSError):
            log.warning("shadow comparison: the cache is unreachable; %s counts dropped", name)
        return
    with _local_lock:
        stored: dict[str, float] = backend.get(name) or {}
        for field_name, amount in fields.items():
            stored[field_name] = stored.get(field_name, 0) + amount
        backend.set(name, stored, timeout=None)


def _read(version_ids: list[int]) -> dict[int, dict[str, float]]:
    backend = caches["default"]
    if isinstance(backend, RedisCache):
        pipe = backend._cache.get_client().pipeline(transaction=False)  # type: ignore[attr-defined]
        for version_id in version_ids:
            pipe.hgetall(backend.make_key(_name(version_id)))
        return {
            version_id: {
                (k.decode() if isinstance(k, bytes) else str(k)): float(v) for k, v in found.items()
            }
            for version_id, found in zip(version_ids, pipe.execute(), strict=True)
        }
    got = backend.get_many([_name(v) for v in version_ids])
    return {v: dict(got.get(_name(v)) or {}) for v in version_ids}


def reset(version_id: int) -> None:
    """Start the version's report afresh (it just became a shadow)."""
    caches["default"].delete(_name(version_id))


@dataclass(frozen=True)
class OutputReport:
    name: str
    agreement: float | None  # labels that agreed / labels compared
    labels: int
    mean_abs_diff: float | None  # per number compared
    values: int
    mismatches: int


@dataclass(frozen=True)
class ShadowReport:
    """A shadow compared with the primary answers, since it became a shadow."""

    pairs: int
    shadow_errors: int
    unanswered: int
    skipped: int
    primary_ms: float | None  # mean worker time of the primary's answers
    shadow_ms: float | None
    outputs: tuple[OutputReport, ...]


def reports(version_ids: list[int]) -> dict[int, ShadowReport]:
    """Each version's report, in one round trip (versions never shadowed report zeros)."""
    read = _read(list(dict.fromkeys(version_ids))) if version_ids else {}
    return {version_id: _summary(found) for version_id, found in read.items()}


def report(version_id: int) -> ShadowReport:
    return reports([version_id])[version_id]


def _summary(found: dict[str, float]) -> ShadowReport:
    pairs = int(found.get("pairs", 0))
    names = sorted({k.split(":", 2)[1] for k in found if k.startswith("o:")})
    outputs = []
    for name in names:
        labels = int(found.get(f"o:{name}:labels", 0))
        values = int(found.get(f"o:{name}:values", 0))
        outputs.append(
            OutputReport(
                name=name,
                agreement=found.get(f"o:{name}:agreed", 0) / labels if labels else None,
                labels=labels,
                mean_abs_diff=found.get(f"o:{name}:abs_diff", 0.0) / values if values else None,
                values=values,
                mismatches=int(found.get(f"o:{name}:mismatches", 0)),
            )
        )
    return ShadowReport(
        pairs=pairs,
        shadow_errors=int(found.get("shadow_errors", 0)),
        unanswered=int(found.get("unanswered", 0)),
        skipped=int(found.get("skipped", 0)),
        primary_ms=round(found.get("primary_ms", 0.0) / pairs, 2) if pairs else None,
        shadow_ms=round(found.get("shadow_ms", 0.0) / pairs, 2) if pairs else None,
        outputs=tuple(outputs),
    )


_flusher = Periodic("shadow-compare", FLUSH_SECONDS, flush)
atexit.register(_flusher.run_once)  # a process that stops keeps its last second of comparisons
