"""The transformers runtime on tiny models built into a temporary directory (nothing is
downloaded): causal LM and seq2seq, zip/tar artifacts and local directories, token streaming,
stop sequences, and generation that stops when its consumer does."""

from __future__ import annotations

import io
import tarfile
import threading
import time
from pathlib import Path

import pytest

from inference.runtimes import RuntimeUnavailable, VersionSpec, unavailable_reason
from inference.runtimes.base import InvalidInput
from inference.runtimes.transformers import TransformersRuntime

pytest.importorskip("torch")
pytest.importorskip("transformers")

from testing.tinylm import build_gpt2, build_t5, zipped


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    return build_gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def endless_dir(tmp_path_factory) -> Path:
    return build_gpt2(tmp_path_factory.mktemp("endless"), eos=False, n_positions=1024)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> Path:
    return build_t5(tmp_path_factory.mktemp("t5"))


def _runtime(options: dict | None = None, artifact: bytes | None = None) -> TransformersRuntime:
    spec = VersionSpec(id=1, model="lm", version="1", runtime="transformers", options=options or {})
    runtime = TransformersRuntime(spec)
    runtime.load(artifact)
    runtime.warmup()
    return runtime


def test_it_loads_a_zipped_directory_and_streams_what_predict_returns(gpt2_dir) -> None:
    runtime = _runtime(artifact=zipped(gpt2_dir))
    item = {"prompt": "The quick brown fox", "max_tokens": 12}
    whole = runtime.predict([item])[0]
    chunks = list(runtime.stream(item))
    pieces, last = chunks[:-1], chunks[-1]
    assert all(set(c) == {"text"} and c["text"] for c in pieces)
    assert "".join(c["text"] for c in pieces) == last["text"] == whole["text"]
    assert last["completion_tokens"] == whole["completion_tokens"] <= 12
    assert last["finish_reason"] == whole["finish_reason"]
    assert whole["prompt_tokens"] == last["prompt_tokens"] > 1
    tmp = runtime._tmp
    assert tmp and Path(tmp).exists()
    runtime.close()
    assert not Path(tmp).exists()  # the extracted copy is removed


def test_a_batch_matches_items_run_one_by_one(gpt2_dir) -> None:
    runtime = _runtime({"path": str(gpt2_dir)})
    items = [
        {"prompt": "Hello", "max_tokens": 6},
        {"prompt": "A stream of tokens flows from", "max_tokens": 6},
        {"prompt": "Cancel", "max_tokens": 3},
    ]
    together = runtime.predict(items)
    alone = [runtime.predict([item])[0] for item in items]
    assert [o["text"] for o in together] == [o["text"] for o in alone]
    assert together[2]["completion_tokens"] <= 3


def test_without_end_of_text_it_generates_exactly_max_tokens(endless_dir) -> None:
    runtime = _runtime({"path": str(endless_dir)})
    out = runtime.predict([{"prompt": "Hello world", "max_tokens": 20}])[0]
    assert out["completion_tokens"] == 20
    assert out["finish_reason"] == "length"
    chunks = list(runtime.stream({"prompt": "Hello world", "max_tokens": 20}))
    assert chunks[-1]["completion_tokens"] == 20 and chunks[-1]["text"] == out["text"]


def test_closing_the_stream_stops_generation_at_the_next_token(endless_dir) -> None:
    runtime = _runtime({"path": str(endless_dir)})
    stream = runtime.stream({"prompt": "Hello", "max_tokens": 900})
    got = [next(stream) for _ in range(5)]
    assert all("text" in c for c in got)
    started = time.perf_counter()
    stream.close()
    elapsed = time.perf_counter() - started
    assert not [t for t in threading.enumerate() if t.name.startswith("generate-")]
    assert elapsed < 0.25  # the helper thread ended within about one token


def test_stop_sequences_cut_the_text(endless_dir) -> None:
    runtime = _runtime({"path": str(endless_dir)})
    full = runtime.predict([{"prompt": "Hello", "max_tokens": 30}])[0]["text"]
    assert len(full) > 4
    stop = full[2:4]
    cut = runtime.predict([{"prompt": "Hello", "max_tokens": 30, "stop": [stop]}])[0]
    assert cut["text"] == full[: full.index(stop)]
    assert cut["finish_reason"] == "stop"
    streamed = list(runtime.stream({"prompt": "Hello", "max_tokens": 30, "stop": [stop]}))
    assert streamed[-1]["text"] == cut["text"]
    assert "".join(c["text"] for c in streamed[:-1]) == cut["text"]


def test_sampling_follows_temperature(endless_dir) -> None:
    runtime = _runtime({"path": str(endless_dir)})
    item = {"prompt": "Hello", "max_tokens": 30}
    greedy = {runtime.predict([item])[0]["text"] for _ in range(3)}
    sampled = {runtime.predict([{**item, "temperature": 1.5}])[0]["text"] for _ in range(3)}
    assert len(greedy) == 1
    assert len(sampled) > 1


def test_seq2seq_models_generate_and_stream(t5_dir) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(t5_dir, arcname="t5-tiny")  # wrapped in a folder, as `tar czf` makes it
    runtime = _runtime(artifact=buffer.getvalue())
    assert runtime.seq2seq
    item = {"prompt": "translate: the quick brown fox", "max_tokens": 8}
    whole = runtime.predict([item])[0]
    chunks = list(runtime.stream(item))
    assert "".join(c["text"] for c in chunks[:-1]) == chunks[-1]["text"] == whole["text"]
    assert whole["completion_tokens"] == chunks[-1]["completion_tokens"] <= 8
    two = runtime.predict([item, {"prompt": "Hello world", "max_tokens": 8}])
    assert two[0]["text"] == whole["text"]


def test_chat_messages_use_the_tokenizers_template(tmp_path) -> None:
    directory = build_gpt2(tmp_path / "chat")
    config = directory / "tokenizer_config.json"
    import json

    data = json.loads(config.read_text())
    data["chat_template"] = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    )
    config.write_text(json.dumps(data))
    runtime = _runtime({"path": str(directory)})
    messages = [{"role": "user", "content": "Hello"}]
    assert runtime._prompt({"prompt": "ignored", "messages": messages}) == "<user>Hello<assistant>"
    plain = _runtime({"path": str(build_gpt2(tmp_path / "plain"))})
    assert plain._prompt({"prompt": "user: Hello", "messages": messages}) == "user: Hello"


def test_it_is_unavailable_without_its_engine_or_a_model(monkeypatch, tmp_path) -> None:
    assert unavailable_reason("transformers", {}) is None
    assert "task must be" in str(unavailable_reason("transformers", {"task": "vision"}))
    with pytest.raises(RuntimeUnavailable, match="neither an artifact"):
        _runtime()
    with pytest.raises(RuntimeUnavailable, match="does not exist"):
        _runtime({"path": str(tmp_path / "nope")})
    with pytest.raises(RuntimeUnavailable, match="not a zip or tar"):
        _runtime(artifact=b"not an archive")
    monkeypatch.setattr(TransformersRuntime, "engines", ("sluice_absent_engine",))
    reason = unavailable_reason("transformers", {})
    assert reason and "requirements-models-extra.txt" in reason
    with pytest.raises(RuntimeUnavailable, match="sluice_absent_engine"):
        _runtime({"path": str(tmp_path)})


def test_a_zip_member_may_not_escape_the_extraction_directory() -> None:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../evil.json", "{}")
    with pytest.raises(RuntimeUnavailable, match="escapes"):
        _runtime(artifact=buffer.getvalue())


# --- the context window: checked before the engine runs ---------------------------------------


def test_a_prompt_and_max_tokens_past_the_context_window_are_refused_before_generating(
    gpt2_dir,
) -> None:
    runtime = _runtime({"path": str(gpt2_dir)})  # n_positions 256
    item = {"prompt": "Hello world", "max_tokens": 300}
    with pytest.raises(InvalidInput) as caught:
        runtime.check(item)
    assert list(caught.value.errors) == ["max_tokens"]
    assert "context window of 256 tokens" in caught.value.errors["max_tokens"][0]
    long_prompt = {"prompt": "The quick brown fox jumps over the lazy dog. " * 60}
    with pytest.raises(InvalidInput) as caught:
        runtime.check(long_prompt)
    assert list(caught.value.errors) == ["prompt"]
    fits = runtime.check({"prompt": "Hello world", "max_tokens": 200})
    assert runtime.predict([fits])[0]["completion_tokens"] <= 200


def test_without_max_tokens_the_default_answer_is_cut_to_what_the_prompt_leaves(gpt2_dir) -> None:
    runtime = _runtime({"path": str(gpt2_dir), "max_new_tokens": 64})
    prompt = "Hello world, this is a tiny language model for tests. " * 9
    tokens = len(runtime.tokenizer(prompt)["input_ids"])
    assert 256 - 64 < tokens < 256
    checked = runtime.check({"prompt": prompt})
    assert checked["max_tokens"] == 256 - tokens
    assert runtime.check({"prompt": "Hello"}) == {"prompt": "Hello"}  # room for the default
    runtime.predict([checked])  # runs: no position past the context window


def test_an_empty_prompt_starts_from_the_end_of_text_token(gpt2_dir) -> None:
    runtime = _runtime({"path": str(gpt2_dir)})
    checked = runtime.check({"prompt": "", "max_tokens": 4})
    assert checked["prompt"] == "<|endoftext|>"
    assert runtime.predict([checked])[0]["prompt_tokens"] == 1


def test_registering_derives_the_schema_from_the_models_context_window(gpt2_dir, t5_dir) -> None:
    artifact = io.BytesIO(zipped(gpt2_dir))
    built = TransformersRuntime.on_register({}, artifact, {})
    assert built["properties"]["max_tokens"]["maximum"] == 255 and built["required"] == ["prompt"]
    declared = {
        "type": "object",
        "properties": {"prompt": {"type": "string"}, "max_tokens": {"type": "integer"}},
    }
    bounded = TransformersRuntime.on_register({"max_tokens_limit": 100}, None, declared)
    assert bounded == declared  # a path on another machine: nothing to read here
    bounded = TransformersRuntime.on_register({"path": str(gpt2_dir)}, None, declared)
    assert bounded["properties"]["max_tokens"]["maximum"] == 255
    tighter = TransformersRuntime.on_register(
        {"path": str(gpt2_dir), "max_tokens_limit": 100}, None, {}
    )
    assert tighter["properties"]["max_tokens"]["maximum"] == 100
    # A sequence-to-sequence model's context bounds its input, not its answer.
    assert TransformersRuntime.on_register({"path": str(t5_dir)}, None, {}) == {}
