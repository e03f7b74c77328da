"""What this machine gives with no platform at all: the issue's reference points measured here,
so ``bench/serving.py``'s figures can be set against the peers' (which were measured on
another machine).

    .venv/bin/python bench/ceiling.py [--seconds 15] [--repeats 3]

The same method as ``bench/serving.py``: the server pinned to CPU 0, ``wrk -t1 -c64`` with the
digits POST pinned to CPU 1, a 3 s warm-up, ``--repeats`` runs of ``--seconds``, medians. The
model is the built-in ``digits`` (``inference.registry.builtin.digits_build``), called in process
with ONNX Runtime on one thread. Three servers (``bench/ceiling_apps.py``):

- bare Django under gunicorn gthread (the issue: about 3,900 req/s where it was measured);
- bare Django under uvicorn (the issue: 1,400 to 1,700);
- a frameworkless ASGI callable under uvicorn, standing in for the issue's bare FastAPI
  endpoint (about 6,800, "the ceiling").

Writes bench/results/ceiling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.auth_overhead import machine  # noqa: E402
from bench.serving import INPUTS, RESULTS, parse_wrk, pin, two_free_ports, wait_http  # noqa: E402

SERVERS: dict[str, list[str]] = {
    "django-gunicorn-gthread": [
        *("-m", "gunicorn", "bench.ceiling_apps:django_wsgi", "-k", "gthread"),
        *("--threads", "72", "-w", "1", "--log-level", "warning"),
    ],
    "django-uvicorn": [
        *("-m", "uvicorn", "bench.ceiling_apps:django_asgi", "--http", "httptools"),
        *("--loop", "uvloop", "--no-access-log", "--lifespan", "off", "--log-level", "warning"),
    ],
    "raw-asgi-uvicorn": [
        *("-m", "uvicorn", "bench.ceiling_apps:raw_asgi", "--http", "httptools"),
        *("--loop", "uvloop", "--no-access-log", "--lifespan", "off", "--log-level", "warning"),
    ],
}
REFERENCE = {  # the inference issue's figures, measured on its machine
    "django-gunicorn-gthread": 3900,
    "django-uvicorn": 1550,
    "raw-asgi-uvicorn": 6800,
}


def build_model(path: Path) -> None:
    code = (
        "import django; django.setup(); from inference.registry.builtin import digits_build; "
        f"open({str(path)!r}, 'wb').write(digits_build().onnx)"
    )
    env = {**os.environ, "DEBUG": "true", "DJANGO_SETTINGS_MODULE": "config.settings"}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)


def measure(name: str, model: Path, script: Path, seconds: int, repeats: int) -> dict[str, Any]:
    port, _ = two_free_ports()
    args = SERVERS[name]
    if "gunicorn" in args:
        args = [*args, "-b", f"127.0.0.1:{port}"]
    else:
        args = [*args, "--host", "127.0.0.1", "--port", str(port)]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "CEILING_MODEL": str(model), "PYTHONPATH": path}
    proc = subprocess.Popen(
        [*pin(0), sys.executable, *args], cwd=ROOT, env=env, start_new_session=True
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        url = f"http://127.0.0.1:{port}/infer"
        wrk = [*pin(1), "wrk", "-t1", "-c64", "--latency", "-s", str(script)]
        subprocess.run([*wrk, "-d3s", url], check=True, capture_output=True)
        runs = []
        for _ in range(repeats):
            out = subprocess.run(
                [*wrk, f"-d{seconds}s", url], check=True, capture_output=True, text=True
            ).stdout
            runs.append(parse_wrk(out))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    rps = statistics.median(r["rps"] for r in runs)
    result: dict[str, Any] = {
        "rps": rps,
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "errors": sum(int(r["errors"]) for r in runs),
        "runs": runs,
        "reference_rps": REFERENCE[name],
    }
    result["machine_factor"] = round(rps / REFERENCE[name], 2)
    print(
        f"{name:26} {result['rps']:8.1f} req/s  p99 {result['p99_ms']:7.1f} ms  "
        f"(the issue's machine: {REFERENCE[name]}; here {result['machine_factor']}x)"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(RESULTS / "ceiling.json"))
    args = parser.parse_args()
    started = time.monotonic()
    report: dict[str, Any] = {
        "benchmark": "ceiling",
        "machine": machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "method": (__doc__ or "").strip(),
        "servers": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "digits.onnx"
        build_model(model)
        script = Path(tmp) / "post.lua"
        body = json.dumps({"input": INPUTS["digits"]})
        script.write_text(
            f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        for name in SERVERS:
            report["servers"][name] = measure(name, model, script, args.seconds, args.repeats)
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output} in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
