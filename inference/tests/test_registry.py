from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from inference.catalog.selectors import candidates, model_for_tenant
from inference.models import Model, ModelEvent, ModelVersion
from inference.registry.builtin import DIGITS_OPTIONS, DIGITS_SCHEMA
from inference.tests.conftest import make_version

pytestmark = pytest.mark.django_db


def _weights(name: str = "doubler") -> dict[str, int]:
    return dict(
        ModelVersion.objects.filter(model__name=name, state="active").values_list(
            "version", "traffic_weight"
        )
    )


def test_it_stores_the_artifact_and_its_checksum(digits_onnx: bytes) -> None:
    import hashlib

    row = make_version(
        "withfile",
        artifact=digits_onnx,
        artifact_filename="m.onnx",
        activate=False,
    )
    assert row.state == "draft"
    assert row.checksum == hashlib.sha256(digits_onnx).hexdigest()
    with row.artifact.open("rb") as fh:
        assert fh.read() == digits_onnx
    assert ModelEvent.objects.filter(version=row, action="register").exists()


def test_it_makes_the_first_active_version_stable_with_all_traffic() -> None:
    v1 = make_version()
    assert v1.model.stable_version == v1 and v1.traffic_weight == 100
    v2 = make_version(version="2")
    assert v2.traffic_weight == 0 and v2.model.stable_version == v1


def test_it_runs_a_canary_and_rolls_it_back() -> None:
    v1 = make_version()
    make_version(version="2")
    model = Model.objects.get(name="doubler")
    model.set_weights({"1": 80, "2": 20}, actor="ops")
    assert _weights() == {"1": 80, "2": 20}
    target = model.rollback(actor="ops")
    assert target == v1
    assert _weights() == {"1": 100, "2": 0}
    event = ModelEvent.objects.filter(action="rollback").get()
    assert event.detail == {"canaries_cut": ["2"]} and event.actor == "ops"


def test_it_promotes_and_rolls_a_promotion_back() -> None:
    v1 = make_version()
    v2 = make_version(version="2")
    model = v1.model
    model.promote(v2, actor="ops")
    model.refresh_from_db()
    assert model.stable_version == v2 and model.previous_stable == v1
    assert _weights() == {"1": 0, "2": 100}
    assert model.rollback(actor="ops") == v1
    model.refresh_from_db()
    assert model.stable_version == v1 and _weights() == {"1": 100, "2": 0}


def test_it_rejects_bad_weights() -> None:
    make_version()
    draft = make_version(version="2", activate=False)
    model = draft.model
    with pytest.raises(ValidationError, match="not active"):
        model.set_weights({"2": 10}, actor="ops")
    with pytest.raises(ValidationError, match="no version"):
        model.set_weights({"9": 10}, actor="ops")
    with pytest.raises(ValidationError, match="above 0"):
        model.set_weights({"1": 0}, actor="ops")
    with pytest.raises(ValidationError, match=r"0\.\.100"):
        model.set_weights({"1": 101}, actor="ops")


def test_it_refuses_to_retire_the_stable_version_and_retires_others() -> None:
    v1 = make_version()
    v2 = make_version(version="2")
    with pytest.raises(ValidationError, match="stable"):
        v1.retire(actor="ops")
    v2.retire(actor="ops")
    assert v2.state == "retired" and v2.traffic_weight == 0
    assert [c.version for c in candidates(model_for_tenant("doubler", None))] == ["1"]


def test_it_hides_models_the_plan_does_not_allow(tenant) -> None:
    make_version()
    tenant.allowed_models = ["digits"]
    with pytest.raises(Exception, match="doubler"):
        model_for_tenant("doubler", tenant)


def test_it_rejects_a_queue_no_worker_consumes() -> None:
    with pytest.raises(ValidationError, match="inference queues"):
        make_version(queue="nobody-listens")


def test_it_rejects_a_schema_it_cannot_check() -> None:
    with pytest.raises(ValidationError, match="unsupported type"):
        make_version(input_schema={"properties": {"x": {"type": "matrix"}}})


def test_it_manages_versions_from_the_command_line(tmp_path, digits_onnx: bytes, capsys) -> None:
    artifact = tmp_path / "d.onnx"
    artifact.write_bytes(digits_onnx)
    call_command(
        "registermodel",
        "cli",
        "1",
        "--runtime",
        "onnx",
        "--artifact",
        str(artifact),
        "--options",
        json.dumps(DIGITS_OPTIONS),
        "--input-schema",
        json.dumps(DIGITS_SCHEMA),
        "--activate",
    )
    # No schema nor examples of its own: checked on an input built from the stable one's.
    call_command(
        "registermodel",
        "cli",
        "2",
        "--runtime",
        "onnx",
        "--artifact",
        str(artifact),
        "--options",
        json.dumps(DIGITS_OPTIONS),
        "--activate",
    )
    call_command("setweights", "cli", "1=70", "2=30")
    assert _weights("cli") == {"1": 70, "2": 30}
    call_command("rollback", "cli")
    assert _weights("cli") == {"1": 100, "2": 0}
    call_command("promote", "cli", "2")
    assert _weights("cli") == {"1": 0, "2": 100}
    call_command("listmodels")
    out = capsys.readouterr().out
    assert "cli" in out and "stable" in out and "available" in out
    with pytest.raises(CommandError, match="no version"):
        call_command("promote", "cli", "7")
    with pytest.raises(CommandError, match="VERSION=WEIGHT"):
        call_command("setweights", "cli", "1:3")


def test_it_builds_the_digits_model_once(capsys) -> None:
    call_command("builddigits")
    call_command("builddigits")
    out = capsys.readouterr().out
    assert "registered digits:1 (active" in out and "already registered digits:1" in out
    assert ModelVersion.objects.filter(model__name="digits").count() == 1


def test_it_follows_the_state_machine() -> None:
    v1 = make_version()
    v2 = make_version(version="2", activate=False)
    v2.retire(actor="ops")
    with pytest.raises(ValidationError, match="from retired to retired"):
        v2.retire(actor="ops")
    v2.activate(actor="ops")
    assert v2.state == "active"
    events = ModelEvent.objects.filter(version=v1, action="activate").count()
    v1.activate(actor="ops")  # already active: nothing happens, nothing is logged
    assert ModelEvent.objects.filter(version=v1, action="activate").count() == events
