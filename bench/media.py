"""Media streams: time to first event and real-time factor for each kind, through the whole
stack and for the engine alone.

    .venv/bin/python bench/media.py [--repeats 5] [--mode services|embedded]

services (default): PostgreSQL + Redis, ``manage.py serve --no-worker`` (daphne) and a
``celery -A config worker`` (threads); a database of its own (dropped afterwards) and a Redis
key prefix of its own (deleted afterwards). embedded: ``manage.py serve`` with its in-process
worker on SQLite. Clients are real (httpx for SSE, websockets).

Per kind, after one warm-up run (models loaded): ``--repeats`` runs, medians (and min/max).
- time to first event (TTFE): from sending the request (for the WebSocket session: the first
  audio frame) to the first content event (a transcript, a sentence of audio, a frame's faces, a
  translated sentence).
- real-time factor (RTF): processing time / media duration; processing time is from the request
  to the ``end`` event. Media duration: the input audio (transcription), the speech made
  (speech), the video (video). Text has no duration: for translation the RTF is against the time
  piper takes to say the source text, i.e. whether it keeps up with live speech.
- engine alone: the same inputs through the handler in this process (no HTTP, queue or log),
  so the difference is what the platform adds.
The live WebSocket session is also run paced at real time (100 ms frames every 100 ms): then the
interesting figure is the latency from the end of the audio to the final transcript.

The machine has 2 cores shared with other work: figures are noisy. Writes
bench/results/media.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import websockets  # noqa: E402

from bench.auth_overhead import machine  # noqa: E402
from inference.media.tests.samples import speech_pcm, wav  # noqa: E402
from testing.processes import free_port, manage, running  # noqa: E402

SPEECH_TEXT = (
    "Please open the door. The weather is nice today. "
    "We will meet in the morning and talk about the plan."
)
TRANSLATE_TEXT = " ".join(
    [
        "The weather is nice today.",
        "I have a red car.",
        "We will meet in the morning.",
        "The children are playing in the garden.",
        "She reads a book every week.",
        "The train leaves at eight.",
        "My brother lives in a small house.",
        "They want to learn a new language.",
        "The shop opens at nine.",
        "Thank you for your help.",
    ]
)
CONTENT = {"chunk", "result"}
INSTALL_MEDIA = (
    "from inference.registry.builtin import MEDIA_INSTALLS\n"
    "for install in MEDIA_INSTALLS: install()"
)


# --- the stack --------------------------------------------------------------------------------


@contextlib.contextmanager
def stack(mode: str, admin_url: str, redis_url: str) -> Iterator[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-media-"))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DEBUG="false",
        SECRET_KEY="bench-secret-key-" + "x" * 40,
        SECURE_SSL_REDIRECT="false",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        LOG_LEVEL="WARNING",
        MEDIA_ROOT=str(tmp / "media"),
        RATELIMIT_ENABLE="false",
    )
    dbname = f"sluice_bench_media_{uuid.uuid4().hex[:8]}"
    prefix = f"sluice-bench-media-{uuid.uuid4().hex[:8]}"
    if mode == "services":
        import psycopg

        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        env["DATABASE_URL"] = admin_url.rsplit("/", 1)[0] + f"/{dbname}"
        env["REDIS_URL"] = redis_url
        env["REDIS_KEY_PREFIX"] = prefix
    else:
        env["DATABASE_URL"] = f"sqlite:///{tmp / 'bench.sqlite3'}"
    worker: subprocess.Popen[bytes] | None = None
    try:
        manage(env, "migrate", "--no-input", "-v0")
        # The media models only (``demo`` would also train the toy text model: minutes here).
        manage(env, "shell", "-c", INSTALL_MEDIA)
        manage(env, "createtenant", "Bench")
        key = manage(env, "createapikey", "--tenant", "bench", "--scopes", "infer,streams")
        port = free_port()
        cmd = [sys.executable, "manage.py", "serve", "--port", str(port)]
        if mode == "services":
            cmd.append("--no-worker")
            log = (tmp / "worker.log").open("wb")
            worker = subprocess.Popen(
                [
                    *(sys.executable, "-m", "celery", "-A", "config", "worker"),
                    *("--pool", "threads", "--concurrency", "4", "--queues", "celery,cpu"),
                    *("--without-heartbeat", "--without-mingle", "--without-gossip"),
                    *("--loglevel", "INFO"),
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            give_up = time.monotonic() + 120
            while "ready." not in (tmp / "worker.log").read_text(errors="replace"):
                if worker.poll() is not None or time.monotonic() > give_up:
                    raise RuntimeError((tmp / "worker.log").read_text()[-2000:])
                time.sleep(0.2)
        with running(cmd, env, port=port, timeout=60) as base:
            yield {"base": base, "ws": base.replace("http://", "ws://"), "key": key, "tmp": tmp}
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
        if mode == "services":
            import psycopg
            import redis

            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            client = redis.Redis.from_url(redis_url)
            for name in client.scan_iter(match=f"{prefix}*", count=1000):
                client.delete(name)


# --- clients ----------------------------------------------------------------------------------


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    block: dict[str, str] = {}
    for line in lines:
        if not line:
            if "event" in block:
                yield block["event"], json.loads(block["data"])
            block = {}
            continue
        match = re.match(r"^(event|data): (.*)$", line)
        if match:
            block[match[1]] = match[2]


def post_stream(s: dict[str, Any], path: str, **kwargs: Any) -> dict[str, Any]:
    """One POST answered with SSE: TTFE, total time, the result and end events."""
    headers = {"X-API-Key": s["key"], **kwargs.pop("headers", {})}
    started = time.perf_counter()
    first = None
    result: dict[str, Any] = {}
    end: dict[str, Any] = {}
    with httpx.stream("POST", f"{s['base']}{path}", headers=headers, timeout=120, **kwargs) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{path}: {r.status_code} {r.read()!r}")
        for event, data in _sse(r.iter_lines()):
            if first is None and event in CONTENT:
                first = time.perf_counter() - started
            if event == "result":
                result = data
            if event == "error":
                raise RuntimeError(f"{path}: {data}")
            if event == "end":
                end = data
    return {
        "ttfe": first,
        "total": time.perf_counter() - started,
        "result": result,
        "end": end,
    }


async def ws_session(s: dict[str, Any], pcm: bytes, *, paced: bool) -> dict[str, Any]:
    url = f"{s['ws']}/ws/v1/media/transcriptions"
    async with websockets.connect(url, additional_headers={"X-API-Key": s["key"]}) as ws:
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready", ready
        first: float | None = None
        last_final: float | None = None
        finals: list[str] = []
        end: dict[str, Any] = {}
        done = asyncio.Event()

        async def read() -> None:
            nonlocal first, last_final
            async for message in ws:
                event = json.loads(message)
                if event.get("type") != "event":
                    continue
                if first is None and event["event"] == "chunk":
                    first = time.perf_counter()
                if event["data"].get("type") == "final":
                    last_final = time.perf_counter()
                    finals.append(event["data"]["text"])
                if event["event"] == "end":
                    end.update(event["data"])
                    done.set()

        reader = asyncio.create_task(read())
        started = time.perf_counter()
        for i in range(0, len(pcm), 3200):
            await ws.send(pcm[i : i + 3200])
            if paced:
                await asyncio.sleep(max(0.0, started + (i + 3200) / 32000 - time.perf_counter()))
        audio_sent = time.perf_counter()
        await ws.send(json.dumps({"type": "end"}))
        await asyncio.wait_for(done.wait(), 120)
        ended = time.perf_counter()
        reader.cancel()
    return {
        "ttfe": (first or ended) - started,
        "total": ended - started,
        "final_after_audio": (last_final or ended) - audio_sent,
        "text": " ".join(finals),
        "end": end,
    }


# --- measurements -----------------------------------------------------------------------------


def summary(values: list[float], digits: int = 4) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def repeat(n: int, run: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    run()  # warm-up: the worker loads the model
    return [run() for _ in range(n)]


def platform(s: dict[str, Any], repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    speech = speech_pcm(SPEECH_TEXT)
    audio_seconds = len(speech) / 32000

    runs = repeat(
        repeats,
        lambda: post_stream(
            s,
            "/v1/media/transcriptions",
            content=wav(speech),
            headers={"Content-Type": "audio/wav"},
        ),
    )
    out["transcription"] = {
        "input": f"{audio_seconds:.2f} s of piper speech (16 kHz WAV upload, SSE answer)",
        "transcript": runs[-1]["result"].get("text"),
        "ttfe_s": summary([r["ttfe"] for r in runs]),
        "rtf": summary([r["total"] / audio_seconds for r in runs]),
        "rtf_worker": summary([r["end"]["rtf"] for r in runs]),
    }
    fast = [asyncio.run(ws_session(s, speech, paced=False)) for _ in range(repeats + 1)][1:]
    paced = [asyncio.run(ws_session(s, speech, paced=True)) for _ in range(max(2, repeats // 2))]
    out["transcription_websocket"] = {
        "input": f"{audio_seconds:.2f} s in 100 ms binary frames, sent at once / paced at 1x",
        "transcript": fast[-1]["text"],
        "ttfe_s": summary([r["ttfe"] for r in fast]),
        "rtf": summary([r["total"] / audio_seconds for r in fast]),
        "rtf_worker": summary([r["end"]["rtf"] for r in fast]),
        "paced_ttfe_s": summary([r["ttfe"] for r in paced]),
        "paced_final_after_audio_end_s": summary([r["final_after_audio"] for r in paced]),
    }

    runs = repeat(repeats, lambda: post_stream(s, "/v1/media/speech", json={"text": SPEECH_TEXT}))
    spoken = runs[-1]["result"]["duration"]
    out["audio"] = {
        "input": f"{len(SPEECH_TEXT)} characters, 3 sentences → {spoken:.2f} s of speech",
        "ttfe_s": summary([r["ttfe"] for r in runs]),
        "rtf": summary([r["total"] / r["result"]["duration"] for r in runs]),
        "rtf_worker": summary([r["end"]["rtf"] for r in runs]),
    }

    video_path = long_video(s["tmp"] / "bench.mp4")
    video = video_path.read_bytes()
    runs = repeat(
        repeats,
        lambda: post_stream(
            s, "/v1/media/video", content=video, headers={"Content-Type": "video/mp4"}
        ),
    )
    seconds = runs[-1]["end"]["duration"]
    out["video"] = {
        "input": f"{seconds:.1f} s, 25 fps, 640x480 MPEG-4 ({len(video)} bytes), every frame",
        "frames_with_faces": runs[-1]["end"]["frames_with_faces"],
        "ttfe_s": summary([r["ttfe"] for r in runs]),
        "rtf": summary([r["total"] / seconds for r in runs]),
        "rtf_worker": summary([r["end"]["rtf"] for r in runs]),
    }

    said = post_stream(s, "/v1/media/speech", json={"text": TRANSLATE_TEXT})["result"]["duration"]
    runs = repeat(
        repeats, lambda: post_stream(s, "/v1/media/translations", json={"text": TRANSLATE_TEXT})
    )
    out["translation"] = {
        "input": f"10 sentences, {len(TRANSLATE_TEXT)} characters ({said:.1f} s when spoken)",
        "first_sentence": runs[-1]["result"]["text"].split(". ")[0],
        "ttfe_s": summary([r["ttfe"] for r in runs]),
        "ms_per_sentence": summary([1000 * r["total"] / 10 for r in runs], 2),
        "rtf_vs_spoken": summary([r["total"] / said for r in runs]),
    }
    return out


def long_video(path: Path, seconds: int = 5) -> Path:
    """The test video's face, larger and longer: 640x480, 25 fps, a face in half the frames."""
    import cv2
    import numpy as np
    from skimage import data

    photo = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    face = cv2.resize(photo[0:260, 120:380], (300, 300))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (640, 480))
    for index in range(25 * seconds):
        frame = np.full((480, 640, 3), 128, dtype=np.uint8)
        if (index // 25) % 2 == 0:
            x = 40 + 4 * (index % 25)
            frame[90:390, x : x + 300] = face
        writer.write(frame)
    writer.release()
    return path


def engines(repeats: int, tmp: Path) -> dict[str, Any]:
    """The same inputs through the handlers in this process: the engines' own cost."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("SECRET_KEY", "bench-only-not-a-secret")
    django.setup()  # the built-in options live next to the registry's models
    from inference.registry.builtin import (
        FACES_OPTIONS,
        SPEAK_OPTIONS,
        TRANSCRIBE_OPTIONS,
        TRANSLATE_OPTIONS,
    )
    from inference.runtimes import VersionSpec
    from inference.runtimes.python import PythonRuntime

    def load(options: dict[str, Any]) -> PythonRuntime:
        runtime = PythonRuntime(
            VersionSpec(id=1, model="m", version="1", runtime="python", options=options)
        )
        runtime.load(None)
        runtime.warmup()
        return runtime

    def timed(
        runtime: PythonRuntime, item: Callable[[], dict[str, Any]]
    ) -> list[tuple[float, float, dict]]:
        runs = []
        for n in range(repeats + 1):
            started = time.perf_counter()
            first = None
            last: dict[str, Any] = {}
            for event in runtime.stream(item()):
                if first is None:
                    first = time.perf_counter() - started
                last = event
            if n:
                runs.append((first or 0.0, time.perf_counter() - started, last))
        return runs

    out: dict[str, Any] = {}
    speech = speech_pcm(SPEECH_TEXT)
    runs = timed(load(TRANSCRIBE_OPTIONS), lambda: {"audio": wav(speech)})
    out["transcription"] = {
        "ttfe_s": summary([r[0] for r in runs]),
        "rtf": summary([r[1] / (len(speech) / 32000) for r in runs]),
    }
    runs = timed(load(SPEAK_OPTIONS), lambda: {"text": SPEECH_TEXT})
    out["audio"] = {
        "ttfe_s": summary([r[0] for r in runs]),
        "rtf": summary([r[1] / r[2]["duration"] for r in runs]),
    }
    video = long_video(tmp / "engine.mp4")
    runs = timed(load(FACES_OPTIONS), lambda: {"path": video})
    out["video"] = {
        "ttfe_s": summary([r[0] for r in runs]),
        "rtf": summary([r[1] / r[2]["duration"] for r in runs]),
    }
    translator = load(TRANSLATE_OPTIONS)
    runs = timed(translator, lambda: {"text": TRANSLATE_TEXT})
    translator.close()
    out["translation"] = {
        "ttfe_s": summary([r[0] for r in runs]),
        "ms_per_sentence": summary([100 * r[1] for r in runs], 2),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mode", choices=["services", "embedded"], default="services")
    parser.add_argument(
        "--admin-database-url", default="postgres://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "media.json"))
    args = parser.parse_args()
    started = time.time()
    load_before = os.getloadavg()
    with stack(args.mode, args.admin_database_url, args.redis_url) as s:
        through = platform(s, args.repeats)
        alone = engines(args.repeats, s["tmp"])
    result = {
        "benchmark": "media streams: time to first event and real-time factor per kind",
        "machine": machine(),
        "conditions": (
            f"mode={args.mode}: "
            + (
                "daphne (manage.py serve --no-worker) + celery worker (threads, 4) on "
                "PostgreSQL + Redis"
                if args.mode == "services"
                else "manage.py serve with its in-process worker, SQLite, in-memory log"
            )
            + f"; client on the same machine; {args.repeats} runs after a warm-up, medians; "
            "2 CPU cores shared with other work, so the figures are noisy"
        ),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        # Other work on the machine: the 1/5/15-minute load averages around the run.
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "through_the_platform": through,
        "engine_alone": alone,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
