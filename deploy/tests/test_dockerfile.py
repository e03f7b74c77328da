"""deploy/Dockerfile and .dockerignore, checked without a Docker engine: the stages, users and
commands, the build's collectstatic step run for real, and what the build context keeps."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from deploy.tests.conftest import DEPLOY, REPO, compose

DOCKERFILE = DEPLOY / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        return found[-1]


def parse() -> tuple[dict[str, str], list[Stage]]:
    """ARG defaults before the first FROM, and the stages in order."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip()))
        elif keyword == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def stage(name: str) -> Stage:
    return next(s for s in parse()[1] if s.name == name)


def lineage(name: str) -> list[str]:
    """The stage and every stage it builds on or copies from."""
    found, todo = [], [name]
    names = {s.name for s in parse()[1]}
    while todo:
        current = todo.pop()
        if current in found or current not in names:
            continue
        found.append(current)
        s = stage(current)
        todo.append(s.base)
        todo += re.findall(r"--from=(\S+)", " ".join(s.all("COPY")))
    return found


def test_it_builds_on_python_3_11_slim() -> None:
    args, stages = parse()
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert {"web", "worker", "static"} <= {s.name for s in stages}
    # Without --target docker builds the last stage: the web image.
    assert stages[-1].name == "web"


@pytest.mark.parametrize("name", ["web", "worker"])
def test_images_run_as_a_numeric_non_root_user(name: str) -> None:
    user = stage(name).last("USER").split(":")[0]
    assert user.isdigit() and int(user) > 0
    assert f"--uid {user}" in " ".join(stage("base").all("RUN"))


def test_model_runtimes_go_into_the_worker_image_only() -> None:
    installs_models = {
        s.name for s in parse()[1] if "requirements-models.txt" in " ".join(s.all("RUN"))
    }
    assert installs_models == {"deps-worker"}
    assert "deps-worker" in lineage("worker")
    assert "deps-worker" not in lineage("web")


def test_the_web_image_checks_healthz_and_runs_the_compose_web_command() -> None:
    web = stage("web")
    assert "/healthz" in web.last("HEALTHCHECK")
    assert json.loads(web.last("CMD")) == compose()["services"]["web"]["command"]


def test_the_worker_image_runs_a_worker() -> None:
    cmd = json.loads(stage("worker").last("CMD"))
    assert cmd[:4] == ["celery", "-A", "config", "worker"]


def test_the_builds_collectstatic_step_collects_admin_and_api_docs_assets(tmp_path: Path) -> None:
    (run,) = [r for r in stage("app").all("RUN") if "collectstatic" in r]
    command = shlex.split(run.split("&&")[0])
    env = dict(a.split("=", 1) for a in command if re.fullmatch(r"[A-Z_]+=.*", a))
    argv = [a for a in command if a not in {f"{k}={v}" for k, v in env.items()}]
    assert argv[:2] == ["python", "manage.py"]
    env["STATIC_ROOT"] = str(tmp_path / "static")  # instead of the image's /app/var/static
    env["PATH"] = str(Path(sys.executable).parent)
    result = subprocess.run(
        [sys.executable, *argv[1:]], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "static" / "admin" / "css" / "base.css").is_file()
    assert list((tmp_path / "static").glob("drf_spectacular_sidecar/swagger-ui-dist/*.js"))


def excluded(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; ``!`` re-includes; a
    pattern matching a directory excludes everything under it."""
    result = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            glob = pattern.replace("**/", "*/") if depth > 1 else pattern.replace("**/", "")
            if fnmatch.fnmatchcase(prefix, glob):
                result = not negate
                break
    return result


def test_the_build_context_keeps_the_code_and_drops_secrets_and_clutter() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    needed = [
        "manage.py",
        "requirements.txt",
        "config/settings.py",
        "tenants/models.py",
        "deploy/gunicorn.conf.py",
    ]
    dropped = [
        ".env",
        ".git/HEAD",
        ".venv/bin/python",
        "var/db.sqlite3",
        "deploy/nginx/certs/tls.key",
        "config/__pycache__/settings.cpython-311.pyc",
    ]
    assert [p for p in needed if excluded(p, patterns)] == []
    assert [p for p in dropped if not excluded(p, patterns)] == []
    # Everything the Dockerfile copies by name exists in the kept context.
    for copied in re.findall(r"COPY (?!--from)(?:--\S+ )*(\S+) ", DOCKERFILE.read_text()):
        if copied != ".":
            assert list(REPO.glob(copied)), copied
