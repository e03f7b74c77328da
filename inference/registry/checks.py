"""The pre-activation check: a version answers example inputs before it may take traffic.

Activating a version, or giving traffic to a version that has none (``setweights``, a
promotion), first runs it on example inputs and compares each answer with the outputs the
model declares (:func:`version_check`, called by :mod:`inference.registry.services`). The examples
are the version's own, else the stable version's, else one input built from the input schema; the
declared outputs are the version's ``outputs`` / ``output_datatypes`` / ``output_shapes``
runtime options, else the stable version's.

Where it runs: in a worker that consumes the version's queue (an ``inference_check`` task,
answered through the reply channel within ``INFERENCE_CHECK_TIMEOUT_SECONDS``), so it proves
the version where it will serve — the worker's engines, devices and artifact storage. Where no
worker consumes that queue (the embedded default, whose broker is the process's own; a queue
with no worker up) the same check runs in this process, and the report says so.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from rest_framework import serializers

from inference.catalog import selectors
from inference.models import ModelVersion
from inference.rules.input_schema import validate_input
from inference.transport.lane import live_workers
from inference.transport.replies import reply_wait
from inference.worker import predict
from plumbing.taskref import task_named

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckReport:
    """What a check found: ``ok``, where it ran, how many examples, and the engine's error
    (or the mismatch with the declared outputs) when it failed."""

    ok: bool
    where: str
    examples: int
    ms: float
    error: str | None = None

    def detail(self) -> dict[str, Any]:
        """For the audit log and the API."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def summary(self) -> str:
        outcome = "passed" if self.ok else f"failed: {self.error}"
        return f"check {outcome} ({self.examples} example(s), {self.ms:.0f} ms, in {self.where})"


class CheckFailed(ValidationError):
    """The check refused the change; the message is the report's summary."""

    def __init__(self, version: ModelVersion, report: CheckReport) -> None:
        super().__init__(f"{version}: {report.summary()}")
        self.report = report


def describe(check: dict[str, Any] | None) -> str:
    """How the versions a change gave traffic were proven (the services' answer), in words."""
    if check is None:
        return "no check needed (no version gained traffic)"
    if "skipped" in check:
        return f"check SKIPPED (audited): {check['skipped']}"
    reports = check.get("versions", {"": check})
    return "; ".join(
        f"{label + ': ' if label else ''}check passed on {r['examples']} example(s) in "
        f"{r['ms']:.0f} ms, in {r['where']}"
        for label, r in reports.items()
    )


# --- what the check feeds and expects (web side: reads the registry) ------------------------


def _stable_of(version: ModelVersion) -> ModelVersion | None:
    stable = version.model.stable_version
    return None if stable is None or stable.pk == version.pk else stable


def example_from_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """One input that the schema accepts: every required property at a value inside its
    bounds (the middle of a range, the shortest allowed list)."""
    required = set(schema.get("required", []))
    return {
        name: _value(prop)
        for name, prop in (schema.get("properties") or {}).items()
        if name in required and isinstance(prop, dict)
    }


def _value(prop: dict[str, Any]) -> Any:
    if prop.get("enum"):
        return prop["enum"][0]
    kind = prop.get("type")
    if kind in ("number", "integer"):
        low, high = prop.get("minimum"), prop.get("maximum")
        if low is not None and high is not None:
            middle = (low + high) / 2
        else:
            middle = low if low is not None else min(0, high) if high is not None else 0
        return int(middle) if kind == "integer" else float(middle)
    if kind == "string":
        text = "example"
        text = text + "x" * max(0, int(prop.get("minLength") or 0) - len(text))
        return text[: prop["maxLength"]] if prop.get("maxLength") is not None else text
    if kind == "boolean":
        return False
    if kind == "array":
        count = max(1, int(prop.get("minItems") or 0))
        if prop.get("maxItems") is not None:
            count = min(count, int(prop["maxItems"]))
        items = prop.get("items") if isinstance(prop.get("items"), dict) else {}
        return [_value(items) if items else 0 for _ in range(count)]
    return {}


def examples_for(version: ModelVersion) -> list[dict[str, Any]]:
    """The inputs the check runs, validated by the version's own schema as a request's would
    be: its own examples (all must be valid), else those of the stable version that fit its
    schema, else one built from its schema (or the stable version's). Raises ValidationError
    when there is nothing to run."""
    schema = version.input_schema
    if version.examples:
        valid = []
        for n, example in enumerate(version.examples):
            try:
                valid.append(validate_input(schema, example))
            except serializers.ValidationError as exc:
                raise ValidationError(f"{version}: example {n} is invalid: {exc.detail}") from exc
        return valid
    stable = _stable_of(version)
    fitting = []
    for example in stable.examples if stable is not None else []:
        try:
            fitting.append(validate_input(schema, example))
        except serializers.ValidationError:
            continue  # written for the stable version's schema, not this one's
    if fitting:
        return fitting
    source = schema or (stable.input_schema if stable is not None else {})
    if not source:
        raise ValidationError(
            f"{version}: no example inputs to check it with; declare examples on the version "
            "(registermodel --examples) or an input schema."
        )
    try:
        return [validate_input(schema, example_from_schema(source))]
    except serializers.ValidationError as exc:
        raise ValidationError(
            f"{version}: no input built from its schema passes it ({exc.detail}); declare "
            "examples on the version."
        ) from exc


def declared_outputs(version: ModelVersion) -> dict[str, dict[str, Any]]:
    """``{output: {"datatype"?, "shape"?}}`` from the version's runtime options, else the
    stable version's (the model's outputs); empty when neither declares any."""
    stable = _stable_of(version)
    options = version.runtime_options or {}
    if not options.get("outputs") and stable is not None:
        options = stable.runtime_options or {}
    types = options.get("output_datatypes") or {}
    shapes = options.get("output_shapes") or {}
    return {
        str(name): {
            **({"datatype": types[name]} if name in types else {}),
            **({"shape": list(shapes[name])} if name in shapes else {}),
        }
        for name in options.get("outputs") or []
    }


# --- judging one answer ------------------------------------------------------------------------


def _shape(value: Any) -> list[int] | None:
    """The shape of a rectangular nested list (``[]`` for a scalar); None when ragged."""
    if not isinstance(value, list):
        return []
    inner = [_shape(item) for item in value]
    first = inner[0] if inner else []
    if first is None or any(s != first for s in inner):
        return None
    return [len(value), *first]


def _leaves(value: Any) -> list[Any]:
    return (
        [leaf for item in value for leaf in _leaves(item)] if isinstance(value, list) else [value]
    )


def _fits(leaf: Any, datatype: str) -> bool:
    if datatype == "BOOL":
        return isinstance(leaf, bool)
    if datatype == "BYTES":
        return isinstance(leaf, str)
    if datatype.startswith(("INT", "UINT")):
        return isinstance(leaf, int) and not isinstance(leaf, bool)
    if datatype.startswith(("FP", "BF")):
        return isinstance(leaf, (int, float)) and not isinstance(leaf, bool)
    return True


def output_problem(output: Any, declared: dict[str, dict[str, Any]]) -> str | None:
    """What is wrong with one answer against the declared outputs, or None."""
    if not isinstance(output, dict):
        return f"the answer is {type(output).__name__}, not an object"
    try:
        json.dumps(output)
    except (TypeError, ValueError) as exc:
        return f"the answer is not JSON: {exc}"
    for name, spec in declared.items():
        if name not in output:
            return f"output {name!r} is missing (the answer has {sorted(output)})"
        value = output[name]
        datatype = spec.get("datatype")
        if datatype and not all(_fits(leaf, datatype) for leaf in _leaves(value)):
            return f"output {name!r} is not {datatype}: {str(value)[:80]}"
        want = spec.get("shape")
        if want is not None:
            got = _shape(value)
            if (
                got is None
                or len(got) != len(want)
                or any(w not in (-1, g) for w, g in zip(want, got, strict=True))
            ):
                return f"output {name!r} has shape {got}, the model declares {want}"
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def check_run(
    *,
    version_id: int,
    examples: list[dict[str, Any]],
    declared: dict[str, dict[str, Any]],
    deadline: float,
) -> dict[str, Any]:
    """Load the version in this process's model cache and run the examples through its
    batcher (the path requests take); ``{"ok", "error"?, "ms"}``. The worker half."""
    started = time.perf_counter()

    def answer(error: str | None) -> dict[str, Any]:
        ms = round((time.perf_counter() - started) * 1000, 2)
        return {"ok": error is None, "ms": ms, **({"error": error} if error else {})}

    try:
        # Read afresh, not from the worker's spec cache: an operator may just have edited it.
        spec = selectors.version_spec(version_id)
        loaded = predict.model_cache().get(spec)
        if loaded.checks:  # what only the loaded engine can refuse, as for a request
            examples = [loaded.runtime.check(example) for example in examples]
        results = loaded.batcher.submit_many(examples, deadlines=[deadline] * len(examples))
    except Exception as exc:  # noqa: BLE001 - the engine's error is the check's answer
        log.warning("check of version %s: %s", version_id, _describe(exc))
        return answer(_describe(exc))
    for n, (output, error, _) in enumerate(results):
        problem = _describe(error) if error is not None else output_problem(output, declared)
        if problem is not None:
            log.warning("check of version %s: example %d: %s", version_id, n, problem)
            return answer(f"example {n}: {problem}")
    return answer(None)


# --- where it runs -----------------------------------------------------------------------------


def _workers(queue: str) -> list[str]:
    """Workers consuming ``queue`` now (their batch-lane heartbeat); none when embedded."""
    if settings.EMBEDDED:
        return []
    return live_workers(queue)


def version_check(version: ModelVersion) -> CheckReport:
    """Run the check where the version will serve and report; raises ValidationError when
    there is nothing to check it with."""
    examples = examples_for(version)
    declared = declared_outputs(version)
    timeout = settings.INFERENCE_CHECK_TIMEOUT_SECONDS
    deadline = time.time() + timeout
    workers = _workers(version.queue)
    if not workers:
        why = (
            "the embedded default's broker is this process's own"
            if settings.EMBEDDED
            else f"no worker consumes queue {version.queue}"
        )
        where = f"this process ({why})"
        found = check_run(
            version_id=version.pk, examples=examples, declared=declared, deadline=deadline
        )
    else:
        reply_id = f"check-{uuid.uuid4().hex}"
        task_named("inference_check").apply_async(  # inference.tasks
            args=(version.pk, examples, declared, reply_id, deadline),
            queue=version.queue,
            expires=timeout,
        )
        answered = reply_wait(reply_id, timeout)
        if answered is None:
            found = {
                "ok": False,
                "ms": timeout * 1000,
                "error": f"no worker on queue {version.queue} answered within {timeout:g} s",
            }
            where = f"a worker of queue {version.queue} ({', '.join(workers)})"
        else:
            found = answered
            where = f"worker {answered.get('worker', '?')}"
    report = CheckReport(
        ok=bool(found["ok"]),
        where=where,
        examples=len(examples),
        ms=float(found["ms"]),
        error=found.get("error"),
    )
    log.info("%s: %s", version, report.summary())
    return report
