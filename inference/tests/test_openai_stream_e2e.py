"""The official ``openai`` client, unchanged, on the built-in ``textgen`` model through a live
``manage.py serve`` (daphne and its in-process worker): completions and chat completions,
streamed and not; a stream the client abandons stops the generation."""

from __future__ import annotations

import sys
import time

import httpx
import pytest
from django.conf import settings

from streaming.eventlog import RedisLog
from testing.processes import free_port, manage, own_database, running, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]
openai = pytest.importorskip("openai")
pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The demo (which builds textgen, or takes it from var/cache) and ``serve``."""
    tmp_path = tmp_path_factory.mktemp("openai")
    with own_database(tmp_path) as url:
        env = server_env(url, RATELIMIT_IP_RATE="10000/h", MEDIA_ROOT=str(tmp_path / "media"))
        manage(env, "migrate", "--no-input", "-v0")
        key = manage(env, "demo", "--key-file", str(tmp_path / "key"))
        port = free_port()
        cmd = [sys.executable, "manage.py", "serve", "--port", str(port)]
        with running(cmd, env, port=port, timeout=60) as base:
            # The worker loads torch and the model on first use; on a busy machine that can
            # take longer than the default deadline the OpenAI endpoints use.
            warm = httpx.post(
                f"{base}/v1/models/textgen/infer",
                json={"input": {"prompt": "warm", "max_tokens": 2}, "timeout_ms": 60000},
                headers={"X-API-Key": key},
                timeout=90,
            )
            assert warm.status_code == 200, warm.text
            yield {"base": base, "key": key, "prefix": env.get("REDIS_KEY_PREFIX")}


@pytest.fixture
def client(server):
    return openai.OpenAI(
        base_url=f"{server['base']}/v1", api_key=server["key"], max_retries=0, timeout=120
    )


def test_chat_completions_answer_and_stream_the_same_greedy_text(client) -> None:
    messages = [{"role": "user", "content": "Tell me of Joseph and his brethren"}]
    answer = client.chat.completions.create(
        model="textgen", messages=messages, max_tokens=24, temperature=0
    )
    text = answer.choices[0].message.content
    assert answer.object == "chat.completion" and answer.model == "textgen"
    assert answer.choices[0].message.role == "assistant"
    assert text and len(text.split()) >= 3  # words of (King James-sounding) English
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert 0 < answer.usage.completion_tokens <= 24
    assert answer.usage.prompt_tokens > 5

    pieces, finish, usage, ids = [], None, None, set()
    for chunk in client.chat.completions.create(
        model="textgen",
        messages=messages,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ):
        ids.add(chunk.id)
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert len(ids) == 1
    assert len([p for p in pieces if p]) > 3  # token by token, not one blob
    assert "".join(pieces) == text
    assert finish == answer.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == answer.usage.completion_tokens


def test_completions_stream_text_pieces(client) -> None:
    started = time.perf_counter()
    stream = client.completions.create(
        model="textgen", prompt="And God said", max_tokens=16, stream=True
    )
    pieces = [choice.text for chunk in stream for choice in chunk.choices]
    assert sum(1 for p in pieces if p) > 3
    assert time.perf_counter() - started < 60
    whole = client.completions.create(model="textgen", prompt="In the beginning", max_tokens=8)
    assert whole.choices[0].text and whole.usage.completion_tokens <= 8


def test_an_abandoned_stream_stops_the_generation(server, client) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="textgen",
        messages=[{"role": "user", "content": "Speak at length"}],
        max_tokens=200,  # room for the chat prompt in textgen's 256-token context
        stream=True,
    ) as response:
        stream_id = response.headers["x-sluice-stream"]
        for n, _ in enumerate(response.iter_lines()):
            if n >= 6:
                break
    if not settings.REDIS_URL:
        return  # embedded: the stream log lives inside the server process
    stream_log = RedisLog(settings.REDIS_URL, server["prefix"])
    give_up = time.monotonic() + 20
    while time.monotonic() < give_up:
        events = stream_log.read(stream_id, count=1000)
        if events and events[-1].event == "end":
            assert events[-1].data["reason"] == "cancelled"
            assert sum(e.event == "token" for e in events) < 200
            return
        time.sleep(0.05)
    raise AssertionError("the abandoned stream did not end")


def test_errors_reach_the_client_as_openai_exceptions(client) -> None:
    with pytest.raises(openai.UnprocessableEntityError, match="not a text-generation model"):
        client.chat.completions.create(
            model="sentiment", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    with pytest.raises(openai.UnprocessableEntityError):
        client.completions.create(model="textgen", prompt="hi", n=2)
