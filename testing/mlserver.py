"""A real KServe v2 server for tests: MLServer 1.7 with its scikit-learn runtime, in a
virtualenv of its own (its pins clash with Sluice's), serving a classifier trained on the
digits data scikit-learn ships.

The virtualenv is built once per machine under the user's cache directory
(``$XDG_CACHE_HOME/sluice``, default ``~/.cache/sluice``), keyed by the pins, so every checkout,
test pass and CI run on the machine reuses it; building it takes about a minute from PyPI.
MLServer 1.7 needs Python 3.9 to 3.12: under another Python the first such interpreter on PATH
builds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from testing.processes import free_port

REQUIREMENTS = ("mlserver==1.7.*", "mlserver-sklearn==1.7.*", "uvloop<0.22")
SUPPORTED = ((3, 9), (3, 12))  # MLServer 1.7's Requires-Python: >=3.9,<3.13
MODEL = "digits"
MODEL_VERSION = "v1"

TRAIN = """
import json, sys, joblib
from pathlib import Path
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

root = Path(sys.argv[1])
x, y = load_digits(return_X_y=True)
joblib.dump(LogisticRegression(max_iter=3000).fit(x, y), root / "model.joblib")
"""


class Unavailable(Exception):
    """MLServer's virtualenv cannot be built here (no suitable Python, no PyPI, …)."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sluice"


def _digest() -> str:
    return hashlib.sha256("|".join(REQUIREMENTS).encode()).hexdigest()[:12]


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None  # e.g. a pyenv shim of a version that is not selected
    major, minor = out.stdout.strip().split(".")
    return int(major), int(minor)


def _interpreter() -> tuple[str, tuple[int, int]]:
    candidates = [sys.executable, *(f"python3.{m}" for m in (12, 11, 10, 9))]
    for name in candidates:
        path = shutil.which(name) if os.sep not in name else name
        version = _version_of(path) if path else None
        if version and SUPPORTED[0] <= version <= SUPPORTED[1]:
            return str(path), version
    raise Unavailable("MLServer 1.7 needs Python 3.9-3.12 and none was found on PATH")


def _complete(venv: Path) -> bool:
    return (venv / ".complete").exists() and (venv / "bin" / "mlserver").exists()


def ensure_venv() -> Path:
    """The virtualenv with MLServer, built if no complete one is cached (under a file lock,
    so parallel test runs build it once)."""
    root = cache_root()
    for existing in sorted(root.glob(f"venv-mlserver-*-{_digest()}")):
        if _complete(existing):
            return existing
    python, (major, minor) = _interpreter()
    venv = root / f"venv-mlserver-py{major}.{minor}-{_digest()}"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "venv-mlserver.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(venv):
            return venv
        shutil.rmtree(venv, ignore_errors=True)  # a build that died half way
        steps = [
            [python, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *REQUIREMENTS],
        ]
        for step in steps:
            try:
                done = subprocess.run(step, capture_output=True, text=True, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise Unavailable(f"building MLServer's virtualenv failed: {exc}") from exc
            if done.returncode != 0:
                tail = (done.stderr or done.stdout)[-1500:]
                raise Unavailable(f"building MLServer's virtualenv failed: {tail}")
        (venv / ".complete").write_text(" ".join(REQUIREMENTS))
    return venv


@contextlib.contextmanager
def mlserver(workdir: Path) -> Iterator[tuple[str, int]]:
    """MLServer serving ``digits`` (version ``v1``) from ``workdir``; yields its HTTP base URL
    and metrics port. The model is trained inside MLServer's virtualenv (its scikit-learn)."""
    venv = ensure_venv()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "PYTHON"))}
    # One BLAS thread: on a busy two-core machine a thread pool per process thrashes (training
    # took 15 s instead of 2).
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    model_dir = workdir / MODEL
    model_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-c", TRAIN, str(model_dir)],
        check=True,
        capture_output=True,
        timeout=300,
        env=env,
    )
    (model_dir / "model-settings.json").write_text(
        json.dumps(
            {
                "name": MODEL,
                "implementation": "mlserver_sklearn.SKLearnModel",
                "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
                "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1, 1]}],
                "parameters": {"uri": "./model.joblib", "version": MODEL_VERSION},
            }
        )
    )
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (workdir / "settings.json").write_text(
        json.dumps(
            {
                "http_port": http_port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
                "parallel_workers": 0,  # inference in the server process: one process to stop
                "host": "127.0.0.1",
            }
        )
    )
    cmd = [str(venv / "bin" / "mlserver"), "start", str(workdir)]
    base = f"http://127.0.0.1:{http_port}"
    with _running(cmd, env, ready=f"{base}/v2/models/{MODEL}/ready", timeout=120):
        yield base, metrics_port


@contextlib.contextmanager
def _running(cmd: list[str], env: dict[str, str], *, ready: str, timeout: float) -> Iterator[None]:
    """Start ``cmd`` in a session of its own, wait until ``ready`` answers 200, stop it after
    (testing.processes.running waits for Sluice's /healthz, which MLServer does not serve)."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below; a file never blocks the child
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"mlserver exited: {log.read().decode()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready, timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlserver was not ready within {timeout}s")
            time.sleep(0.2)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def infer_count(metrics_port: int) -> float:
    """Infer requests MLServer has served for the model (from its Prometheus metrics)."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("model_infer_request_success_total{") and f'model="{MODEL}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


if __name__ == "__main__":  # .ci/run builds it ahead of the tests: `python -m testing.mlserver`
    print(ensure_venv())
