"""The pre-activation check (inference/registry/checks.py): nothing unproven gets traffic."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from inference.models import ModelEvent, ModelVersion
from inference.registry import checks, services
from inference.registry.builtin import (
    DIGITS_OPTIONS,
    DIGITS_SCHEMA,
    TEXTGEN_SCHEMA,
    digits_install,
    mlp_install,
    sentiment_install,
)
from inference.rules.input_schema import validate_input
from inference.tests.conftest import lane_queue, make_version
from inference.tests.fakes import DOUBLER

pytestmark = pytest.mark.django_db


def _weights(name: str) -> dict[str, int]:
    return dict(
        ModelVersion.objects.filter(model__name=name, state="active").values_list(
            "version", "traffic_weight"
        )
    )


@pytest.fixture
def misnamed(tmp_path: Path, digits_onnx: bytes) -> Path:
    """The issue's artifact: an ONNX model whose input (``X``) is not the field requests send
    (``pixels``), registered without the options that would map one to the other."""
    path = tmp_path / "digits-v2.onnx"
    path.write_bytes(digits_onnx)
    return path


def _register(path: Path, *extra: str) -> None:
    call_command(
        "registermodel", "digits", "2", "--runtime", "onnx", "--artifact", str(path), *extra
    )


def test_it_refuses_to_activate_an_onnx_version_whose_input_is_named_differently(
    digits, misnamed
) -> None:
    with pytest.raises(CommandError, match=r"KeyError: 'X'.*stays a draft"):
        _register(misnamed, "--activate")
    broken = ModelVersion.objects.get(model__name="digits", version="2")
    assert broken.state == "draft" and _weights("digits") == {"1": 100}
    event = ModelEvent.objects.get(version=broken, action="check-failed")
    assert "KeyError: 'X'" in event.detail["error"] and event.detail["change"] == "activate"
    assert event.detail["where"].startswith("this process")
    with pytest.raises(checks.CheckFailed, match="KeyError: 'X'"):
        services.version_activate(version=broken, actor="ops")


def test_it_refuses_weights_for_a_version_that_fails_its_check(digits, misnamed) -> None:
    _register(misnamed, "--activate", "--skip-check", "vendor says it is fine")
    assert _weights("digits") == {"1": 100, "2": 0}  # active, but no traffic yet
    with pytest.raises(CommandError, match=r"KeyError: 'X'.*weights unchanged"):
        call_command("setweights", "digits", "1=90", "2=10")
    assert _weights("digits") == {"1": 100, "2": 0}
    # Lowering the stable version's weight gives nobody new traffic: nothing to check.
    call_command("setweights", "digits", "1=80")
    assert _weights("digits") == {"1": 80, "2": 0}


def test_it_refuses_to_promote_a_version_that_fails_its_check(digits, misnamed) -> None:
    _register(misnamed, "--activate", "--skip-check", "testing")
    with pytest.raises(CommandError, match="KeyError: 'X'"):
        call_command("promote", "digits", "2")
    digits.model.refresh_from_db()
    assert digits.model.stable_version_id == digits.pk


def test_it_activates_a_version_that_passes_and_says_where_it_ran(digits, misnamed, capsys):
    _register(misnamed, "--options", json.dumps(DIGITS_OPTIONS), "--activate")
    out = capsys.readouterr().out
    assert "digits:2 is active; check passed on 1 example(s)" in out
    why = (
        "the embedded default's broker is" if settings.EMBEDDED else "no worker consumes queue cpu"
    )
    assert f"in this process ({why}" in out
    event = ModelEvent.objects.get(version__version="2", action="activate")
    assert event.detail["check"]["ok"] is True and event.detail["check"]["examples"] == 1
    call_command("setweights", "digits", "1=90", "2=10")
    assert _weights("digits") == {"1": 90, "2": 10}
    assert "check passed" in capsys.readouterr().out


def test_a_skipped_check_is_audited_with_who_and_why(digits, misnamed, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="inference.registry.services"):
        _register(misnamed, "--activate", "--skip-check", "the vendor's fix is in v3")
    event = ModelEvent.objects.get(action="check-skipped")
    assert event.detail == {"change": "activate", "reason": "the vendor's fix is in v3"}
    assert event.actor.startswith("manage.py") and event.created_at is not None
    assert ModelEvent.objects.get(action="activate", version=event.version).detail["check"] == {
        "skipped": "the vendor's fix is in v3"
    }
    assert "pre-activation check of digits:2 skipped by manage.py" in caplog.text
    with pytest.raises(CommandError, match="goes with --activate"):
        call_command(
            "registermodel", "digits", "3", "--runtime", "onnx", "--artifact", str(misnamed),
            "--skip-check", "x",
        )  # fmt: skip


def test_skipping_needs_a_reason(digits, misnamed) -> None:
    _register(misnamed)
    version = ModelVersion.objects.get(model__name="digits", version="2")
    with pytest.raises(ValidationError, match="needs a reason"):
        services.version_activate(version=version, actor="ops", skip_check="  ")
    assert ModelVersion.objects.get(pk=version.pk).state == "draft"


def test_it_compares_the_answer_with_the_declared_outputs() -> None:
    make_version()
    liar = make_version(
        version="2",
        options={**DOUBLER, "outputs": ["y"], "output_datatypes": {"y": "BYTES"}},
        activate=False,
    )
    with pytest.raises(checks.CheckFailed, match="output 'y' is not BYTES"):
        services.version_activate(version=liar, actor="ops")


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ({"label": 3, "probabilities": [0.1] * 10}, None),
        ({"label": 3}, "output 'probabilities' is missing"),
        ({"label": "3", "probabilities": [0.1] * 10}, "output 'label' is not INT64"),
        ({"label": True, "probabilities": [0.1] * 10}, "output 'label' is not INT64"),
        ({"label": 3, "probabilities": [0.1] * 3}, "has shape [3], the model declares [10]"),
        ({"label": [3], "probabilities": [0.1] * 10}, "has shape [1], the model declares []"),
        ({"label": 3, "probabilities": [[0.1], 0.2]}, "has shape None"),
        ([1, 2], "the answer is list, not an object"),
        ({"label": 3, "probabilities": [0.1] * 10, "raw": b"x"}, "the answer is not JSON"),
    ],
)
def test_it_judges_an_answer_by_name_datatype_and_shape(output, problem) -> None:
    declared = {
        "label": {"datatype": "INT64", "shape": []},
        "probabilities": {"datatype": "FP32", "shape": [10]},
    }
    found = checks.output_problem(output, declared)
    assert found == problem if problem is None else problem in found


def test_it_builds_an_example_the_schema_accepts() -> None:
    for schema in (DIGITS_SCHEMA, TEXTGEN_SCHEMA):
        example = checks.example_from_schema(schema)
        assert validate_input(schema, example) == example
    assert checks.example_from_schema(DIGITS_SCHEMA)["pixels"] == [8.0] * 64
    enum = {
        "properties": {"rate": {"type": "integer", "enum": [8000, 16000]}},
        "required": ["rate"],
    }
    assert checks.example_from_schema(enum) == {"rate": 8000}


def test_it_takes_examples_from_the_version_then_the_stable_one_then_the_schema() -> None:
    stable = make_version()
    stable.examples = [{"x": 3}, {"x": 4}]
    stable.save()
    same_schema = make_version(version="2", activate=False)
    assert checks.examples_for(same_schema) == [{"x": 3}, {"x": 4}]
    other = make_version(
        version="3",
        activate=False,
        input_schema={"properties": {"text": {"type": "string"}}, "required": ["text"]},
    )
    assert checks.examples_for(other) == [{"text": "example"}]  # the stable's do not fit
    own = make_version(version="4", activate=False, examples=[{"x": 7}])
    assert checks.examples_for(own) == [{"x": 7}]
    wrong = make_version(version="5", activate=False, examples=[{"x": "many"}])
    with pytest.raises(ValidationError, match="example 0 is invalid"):
        checks.examples_for(wrong)


def test_a_model_with_no_schema_and_no_examples_cannot_be_checked() -> None:
    bare = make_version("bare", input_schema={}, activate=False)
    with pytest.raises(ValidationError, match="no example inputs"):
        services.version_activate(version=bare, actor="ops")
    assert ModelVersion.objects.get(pk=bare.pk).state == "draft"


def test_promoting_a_serving_canary_needs_no_check(monkeypatch) -> None:
    make_version()
    canary = make_version(version="2")
    services.model_set_weights(model=canary.model, weights={"2": 10}, actor="ops")

    def no_check(version: ModelVersion) -> checks.CheckReport:
        raise AssertionError("checked again")

    monkeypatch.setattr(checks, "version_check", no_check)
    assert services.version_promote(version=canary, actor="ops") is None
    canary.model.refresh_from_db()
    assert canary.model.stable_version_id == canary.pk


def test_rollback_is_never_held_up_by_a_check(monkeypatch) -> None:
    v1 = make_version()
    make_version(version="2")
    services.model_set_weights(model=v1.model, weights={"1": 50, "2": 50}, actor="ops")
    monkeypatch.setattr(checks, "version_check", lambda version: 1 / 0)
    assert services.model_rollback(model=v1.model, actor="ops") == v1


def test_each_builtin_passes_its_own_check() -> None:
    for install in (digits_install, mlp_install, sentiment_install):
        version, _ = install(actor="test", activate=False)
        assert version.examples, version
        report = checks.version_check(version)
        assert report.ok, (version, report)


def test_textgen_passes_its_own_check() -> None:
    pytest.importorskip("transformers")
    from inference.registry.builtin import textgen_install

    version, _ = textgen_install(actor="test", activate=False)
    report = checks.version_check(version)
    assert report.ok, report


# --- where it runs (the Redis configuration: workers announce themselves on the lane) ----------


@pytest.mark.redis
@pytest.mark.skipif(not settings.REDIS_URL, reason="workers are seen through Redis")
def test_it_runs_the_check_in_a_worker_of_the_versions_queue(lanes, eager, settings) -> None:
    queue = lane_queue()
    settings.INFERENCE_QUEUES = [*settings.INFERENCE_QUEUES, queue]
    lanes(queue, hostname="checker@test").start()
    make_version()
    version = make_version(version="2", queue=queue, activate=False)
    report = checks.version_check(version)
    assert report.ok, report
    # Eager: the task ran here, but it went through the task and the reply channel.
    assert report.where.startswith("worker ")


@pytest.mark.redis
@pytest.mark.skipif(not settings.REDIS_URL, reason="workers are seen through Redis")
def test_a_worker_that_does_not_answer_in_time_fails_the_check(lanes, settings) -> None:
    queue = lane_queue()
    settings.INFERENCE_QUEUES = [*settings.INFERENCE_QUEUES, queue]
    settings.INFERENCE_CHECK_TIMEOUT_SECONDS = 1
    # Registered and beating, but no Celery consumer behind it takes the task.
    lanes(queue, hostname="silent@test").start()
    make_version()
    version = make_version(version="2", queue=queue, activate=False)
    with pytest.raises(checks.CheckFailed, match=f"no worker on queue {queue} answered within 1 s"):
        services.version_activate(version=version, actor="ops")
    assert ModelVersion.objects.get(pk=version.pk).state == "draft"


@pytest.mark.redis
@pytest.mark.skipif(not settings.REDIS_URL, reason="workers are seen through Redis")
def test_it_sees_which_workers_serve_a_queue(lanes) -> None:
    from inference.transport.lane import alive_key, live_workers
    from inference.transport.redis_client import client

    queue = lane_queue()
    assert live_workers(queue) == []
    worker = lanes(queue, hostname="w1@test")
    worker.start()
    assert live_workers(queue) == ["w1@test"]
    client().delete(alive_key("w1@test"))  # its heartbeat expired
    assert live_workers(queue) == []
