from __future__ import annotations

import pytest
from django.core.management import call_command

from inference.models import ModelVersion
from inference.runtimes import VersionSpec
from inference.runtimes.python import PythonRuntime
from inference.tests.fakes import DOUBLER

pytestmark = pytest.mark.django_db


def test_it_loads_the_builtin_models_with_the_demo(tmp_path, capsys) -> None:
    call_command("demo", key_file=str(tmp_path / "key"))
    out = capsys.readouterr()
    assert out.out.strip().startswith("sk_live_")  # stdout is only the key (make run reads it)
    assert "digits:1 registered" in out.err
    version = ModelVersion.objects.get(model__name="digits")
    assert version.state == "active" and version.model.stable_version == version
    call_command("demo", key_file=str(tmp_path / "key"))
    assert ModelVersion.objects.filter(model__name="digits").count() == 1


def test_it_streams_through_a_runtime_without_streaming() -> None:
    runtime = PythonRuntime(
        VersionSpec(id=1, model="m", version="1", runtime="python", options=DOUBLER)
    )
    runtime.load(None)
    assert list(runtime.stream({"x": 2})) == [{"y": 4}]
    runtime.close()
    assert runtime.handler is None
