"""Shared helpers for the deployment tests: the repository's files, rendered manifests, and
real server processes started on free ports (and always stopped)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from testing.processes import free_port  # noqa: F401  (re-exported to the tests)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = REPO / "docker-compose.yml"
OVERLAYS = ("production", "gpu")

# Variables the manifests set that config/settings.py does not read, and who reads them.
NON_SETTINGS_VARIABLES = {
    "PORT": "deploy/gunicorn.conf.py and the Dockerfile health check",
    "PUBLIC_HOST": "the manifests, to build ALLOWED_HOSTS and CSRF_TRUSTED_ORIGINS",
    "POD_IP": "the manifests, to build ALLOWED_HOSTS",
    "REDIS_ADDRESS": "KEDA's Redis scaler",
    "REDIS_PASSWORD": "KEDA's Redis scaler",
}


def load_yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


def compose_default(value: str) -> str:
    """A compose value with every ``${NAME:-default}`` replaced by its default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def settings_variables() -> set[str]:
    """The environment variables config/settings.py and deploy/gunicorn.conf.py read."""
    settings = (REPO / "config" / "settings.py").read_text()
    names = set(re.findall(r"env\.\w+\(\s*\"([A-Z0-9_]+)\"", settings))
    gunicorn = (DEPLOY / "gunicorn.conf.py").read_text()
    names |= set(re.findall(r"(?:_int|os\.environ\.get)\(\s*[\"']([A-Z0-9_]+)[\"']", gunicorn))
    return names


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed here: the Kubernetes overlays cannot be rendered")
    return path


_rendered: dict[str, list[dict[str, Any]]] = {}


def render(overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of an overlay (offline: kustomize needs no cluster)."""
    if overlay not in _rendered:
        out = subprocess.run(
            [kubectl(), "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        _rendered[overlay] = [d for d in yaml.safe_load_all(out.stdout) if d]
    return _rendered[overlay]


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def program(name: str) -> str:
    """An entry point of this virtual environment (gunicorn, daphne, celery)."""
    found = Path(sys.executable).parent / name
    return str(found) if found.exists() else name


@pytest.fixture
def process_env(tmp_path: Path) -> dict[str, str]:
    """Production-like settings for a server process: a throwaway SQLite database, and the
    suite's REDIS_URL / REDIS_KEY_PREFIX (when set) so the Redis pass covers Redis."""
    env = dict(os.environ)
    env.update(
        {
            "DEBUG": "false",
            "SECRET_KEY": "deploy-tests-only-secret-key-0123456789-abcdefghij",
            "SECURE_SSL_REDIRECT": "false",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class Running:
    """A started process whose output goes to a file (a pipe could fill and block it)."""

    def __init__(self, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.popen = popen
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None


@contextmanager
def spawn(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[Running]:
    """Start ``cmd`` in the repository root; on exit stop it (SIGTERM, then SIGKILL of its
    own process group) however the test ended."""
    with log.open("wb") as out:
        popen = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        running = Running(popen, log)
        try:
            yield running
        finally:
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
                try:
                    popen.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(popen.pid, signal.SIGKILL)
                    popen.wait(timeout=5)


def wait_for(
    check: Callable[[], bool], *, running: Running, timeout: float = 60, what: str = ""
) -> None:
    """Poll ``check`` until it holds; fail with the process output if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not running.alive():
            pytest.fail(
                f"{what}: the process exited ({running.popen.returncode}):\n{running.output()}"
            )
        time.sleep(0.3)
    pytest.fail(f"{what}: not within {timeout}s:\n{running.output()}")


def answers(url: str, status: int = 200) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == status
        except httpx.HTTPError:
            return False

    return check
