"""OpenAI-compatible completions and chat completions on a text model, in process: answers,
usage in tokens, stop sequences, and ``stream: true`` in OpenAI's chunk format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference.tests.test_streams import make_lm

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def lm_zip(tmp_path_factory) -> bytes:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from testing.tinylm import build_gpt2, zipped

    return zipped(build_gpt2(Path(tmp_path_factory.mktemp("lm")), eos=False, n_positions=512))


def chunks(response) -> list[dict | str]:
    text = b"".join(response.streaming_content).decode()
    out: list[dict | str] = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_completions_answer_with_token_usage(api, lm_zip, eager) -> None:
    make_lm(lm_zip)
    body = api.post(
        "/v1/completions", {"model": "lm", "prompt": "Hello", "max_tokens": 7}, format="json"
    ).json()
    assert body["object"] == "text_completion" and body["model"] == "lm"
    [choice] = body["choices"]
    assert choice["finish_reason"] == "length" and choice["text"]
    assert body["usage"]["completion_tokens"] == 7
    assert body["usage"]["total_tokens"] == 7 + body["usage"]["prompt_tokens"]


def test_chat_completions_answer_as_the_assistant(api, lm_zip, eager) -> None:
    make_lm(lm_zip)
    response = api.post(
        "/v1/chat/completions",
        {"model": "lm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5},
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] == 5
    assert response["X-Sluice-Version"] == "1"


def test_stop_cuts_the_completion(api, lm_zip, eager) -> None:
    make_lm(lm_zip)
    ask = {"model": "lm", "prompt": "Hello", "max_tokens": 30}
    full = api.post("/v1/completions", ask, format="json").json()["choices"][0]["text"]
    stop = full[3:5]
    cut = api.post("/v1/completions", {**ask, "stop": stop}, format="json").json()
    assert cut["choices"][0]["text"] == full[: full.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"


def test_streamed_chat_is_openai_chunks_then_done(api, lm_zip, eager) -> None:
    make_lm(lm_zip)
    response = api.post(
        "/v1/chat/completions",
        {
            "model": "lm",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 9,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        format="json",
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    got = chunks(response)
    assert got[-1] == "[DONE]"
    parts = [c for c in got[:-1] if isinstance(c, dict)]
    assert all(c["object"] == "chat.completion.chunk" for c in parts)
    assert len({c["id"] for c in parts}) == 1
    assert parts[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in parts if c["choices"])
    finals = [c for c in parts if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [f["choices"][0]["finish_reason"] for f in finals] == ["length"]
    assert parts[-1]["choices"] == [] and parts[-1]["usage"]["completion_tokens"] == 9
    whole = api.post(
        "/v1/chat/completions",
        {"model": "lm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 9},
        format="json",
    ).json()
    assert text == whole["choices"][0]["message"]["content"]  # greedy: the same text


def test_streamed_completion_chunks_carry_text(api, lm_zip, eager) -> None:
    make_lm(lm_zip)
    got = chunks(
        api.post(
            "/v1/completions",
            {"model": "lm", "prompt": "Hello", "max_tokens": 6, "stream": True},
            format="json",
        )
    )
    parts = [c for c in got if isinstance(c, dict)]
    assert all(c["object"] == "text_completion" for c in parts)
    assert sum(1 for c in parts if c["choices"][0]["text"]) >= 1
    assert parts[-1]["choices"][0]["finish_reason"] == "length"
    assert got[-1] == "[DONE]"


def test_it_refuses_what_it_cannot_do(api, lm_zip, eager) -> None:
    make_lm(lm_zip)
    many = api.post("/v1/completions", {"model": "lm", "prompt": "x", "n": 2}, format="json")
    assert many.status_code == 422 and many.json()["error"]["code"]
    bad_stop = api.post("/v1/completions", {"model": "lm", "prompt": "x", "stop": 3}, format="json")
    assert bad_stop.status_code == 422
    no_messages = api.post("/v1/chat/completions", {"model": "lm", "messages": []}, format="json")
    assert no_messages.status_code == 422
