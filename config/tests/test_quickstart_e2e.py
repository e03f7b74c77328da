"""The quick start's models through a real ``manage.py serve``, as ``make run`` starts it
(``migrate``, ``demo``, ``serve``): the official ``openai`` client streams ``textgen``'s tokens,
``/v1/media/speech`` answers a WAV, and transcribing that WAV through
``/v1/media/transcriptions`` gives back its words. Everything comes from
``requirements-models.txt`` (the quick start's install): no torch, nothing trained at start."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import httpx
import pytest

from testing.processes import free_port, manage, own_database, running, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]
openai = pytest.importorskip("openai")
pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")
pytest.importorskip("piper")
pytest.importorskip("pocketsphinx")

SPOKEN = "Please open the door. The weather is nice today."


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("quickstart")
    with own_database(tmp) as url:
        env = server_env(url, RATELIMIT_IP_RATE="", MEDIA_ROOT=str(tmp / "media"))
        manage(env, "migrate", "--no-input", "-v0")
        started = time.perf_counter()
        key = manage(env, "demo", "--key-file", str(tmp / "key"))
        demo_seconds = time.perf_counter() - started
        port = free_port()
        cmd = [sys.executable, "manage.py", "serve", "--port", str(port)]
        with running(cmd, env, port=port, timeout=60) as base:
            yield {"base": base, "key": key, "demo_seconds": demo_seconds}


def test_the_demo_trains_nothing(quickstart: dict[str, Any]) -> None:
    # registering every built-in from what ships: seconds, not the minute training took
    assert quickstart["demo_seconds"] < 60


def test_the_openai_client_streams_textgen_tokens(quickstart: dict[str, Any]) -> None:
    client = openai.OpenAI(
        base_url=f"{quickstart['base']}/v1", api_key=quickstart["key"], max_retries=0, timeout=60
    )
    pieces, finish = [], None
    for chunk in client.chat.completions.create(
        model="textgen",
        messages=[{"role": "user", "content": "Tell me of Noah and the ark"}],
        max_tokens=24,
        stream=True,
    ):
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert len([p for p in pieces if p]) > 3  # token by token
    assert len("".join(pieces).split()) >= 3 and finish in ("stop", "length")


def test_speech_gives_a_wav_that_transcribes_back_to_its_words(
    quickstart: dict[str, Any],
) -> None:
    headers = {"X-API-Key": quickstart["key"]}
    spoken = httpx.post(
        f"{quickstart['base']}/v1/media/speech",
        headers={**headers, "Accept": "audio/wav"},
        json={"text": SPOKEN, "sample_rate": 16000},
        timeout=60,
    )
    assert spoken.status_code == 200, spoken.text
    assert spoken.headers["content-type"] == "audio/wav"
    wav = spoken.content
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    with httpx.stream(
        "POST",
        f"{quickstart['base']}/v1/media/transcriptions",
        headers={**headers, "Content-Type": "audio/wav"},
        content=wav,
        timeout=60,
    ) as response:
        assert response.status_code == 200, response.read()
        events = [
            json.loads(line[len("data: ") :])
            for line in response.iter_lines()
            if line.startswith("data: ")
        ]
    text = " ".join(str(e.get("text", "")) for e in events if isinstance(e, dict))
    words = set(text.lower().split())
    # piper samples its noise afresh each time, and pocketsphinx now and then mishears one
    # word (docs/media.md); never two of these three
    assert len({"open", "door", "weather"} & words) >= 2, text
