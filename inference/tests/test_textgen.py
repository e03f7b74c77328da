"""The built-in ``textgen`` model: the ONNX artifact kept in the repository, served by the
``onnx-textgen`` runtime (ONNX Runtime + tokenizers, no torch), registered by the demo without
training anything; and its rebuild from the bundled text (torch, skipped without it) gives the
same greedy tokens as the committed artifact and as the trained model itself."""

from __future__ import annotations

import io
import json
import math
import zipfile

import pytest

from inference.models import ModelVersion
from inference.registry import textgen
from inference.registry.builtin import TEXTGEN, TEXTGEN_OPTIONS, install
from inference.runtimes import VersionSpec, unavailable_reason
from inference.runtimes.base import InvalidInput
from inference.runtimes.onnx_textgen import OnnxTextgenRuntime

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def runtime():
    row = OnnxTextgenRuntime(
        VersionSpec(
            id=1, model=TEXTGEN, version="1", runtime="onnx-textgen", options=TEXTGEN_OPTIONS
        )
    )
    row.load(textgen.ARTIFACT.read_bytes())
    yield row
    row.close()


def text_of(chunks: list[dict]) -> str:
    return "".join(c["text"] for c in chunks[:-1])


def test_the_corpus_is_the_bundled_public_domain_text() -> None:
    chapters = textgen.corpus()
    assert len(chapters) == 50
    assert chapters[0].startswith("In the beginning God created the heaven and the earth.")
    assert not any(c.startswith("#") for c in chapters)


def test_the_committed_artifact_is_small_and_complete() -> None:
    data = textgen.ARTIFACT.read_bytes()
    assert len(data) < 3_000_000
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert sorted(archive.namelist()) == ["config.json", "model.onnx", "tokenizer.json"]
        config = json.loads(archive.read("config.json"))
    assert config["n_positions"] == textgen.Recipe.n_positions
    assert config["eos_token"] == textgen.EOS


def test_greedy_generation_streams_token_pieces_that_make_the_answer(runtime) -> None:
    item = runtime.check({"prompt": "And God said", "max_tokens": 12, "temperature": 0})
    chunks = list(runtime.stream(item))
    last = chunks[-1]
    assert len(chunks) > 4  # piece by piece, then the whole answer
    assert text_of(chunks) == last["text"] and len(last["text"].split()) >= 3
    assert last["completion_tokens"] <= 12 and last["prompt_tokens"] == 3
    assert last["finish_reason"] in ("stop", "length")
    # greedy is deterministic, and predict answers what the stream ended with
    assert runtime.predict([item, item]) == [last, last]


def test_the_kv_cache_gives_what_recomputing_the_whole_sequence_gives(runtime) -> None:
    """Each step feeds one token and the cache; feeding the whole sequence again must choose
    the same next token (the mask, positions and cache line up)."""
    import numpy as np

    settings = {"max_new_tokens": 10, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": 0}
    prompt = runtime.encode("In the beginning")
    cached = list(runtime.tokens(prompt, settings))
    recomputed, ids = [], list(prompt)
    for _ in range(10):
        (token,) = runtime.tokens(ids, {**settings, "max_new_tokens": 1})
        recomputed.append(token)
        ids.append(token)
    assert cached == recomputed
    assert len(set(cached)) > 1 and all(0 <= t < 1024 for t in cached)
    assert np.asarray(cached).dtype.kind == "i"


def test_sampling_follows_temperature_top_p_and_seed(runtime) -> None:
    item = {"prompt": "And the LORD", "max_tokens": 16, "temperature": 1.0}
    seeded = [list(runtime.stream({**item, "seed": 7}))[-1]["text"] for _ in range(2)]
    assert seeded[0] == seeded[1]  # the same seed, the same sample
    answers = {list(runtime.stream({**item, "seed": s}))[-1]["text"] for s in range(6)}
    assert len(answers) > 1  # sampling, not greedy
    # top_p that keeps one token is greedy whatever the temperature and seed
    greedy = list(runtime.stream({**item, "temperature": 0}))[-1]["text"]
    narrow = {**item, "top_p": 1e-9, "temperature": 1.5}
    assert {list(runtime.stream({**narrow, "seed": s}))[-1]["text"] for s in range(3)} == {greedy}


def test_stop_strings_cut_the_answer(runtime) -> None:
    free = list(runtime.stream({"prompt": "And God said", "max_tokens": 30, "temperature": 0}))
    word = free[-1]["text"].split()[2]
    chunks = list(
        runtime.stream(
            {"prompt": "And God said", "max_tokens": 30, "temperature": 0, "stop": [word]}
        )
    )
    assert word not in chunks[-1]["text"] and chunks[-1]["finish_reason"] == "stop"
    assert text_of(chunks) == chunks[-1]["text"]


def test_the_context_window_is_checked_naming_the_field(runtime) -> None:
    with pytest.raises(InvalidInput) as over:
        runtime.check({"prompt": "In the beginning", "max_tokens": 300})
    assert list(over.value.errors) == ["max_tokens"]
    assert "context window of 256 tokens (at most 250 here)" in over.value.errors["max_tokens"][0]
    with pytest.raises(InvalidInput) as full:
        runtime.check({"prompt": "And God said, Let there be light. " * 40})
    assert list(full.value.errors) == ["prompt"]
    # without max_tokens the default completion is cut to what the context has left
    crowded = "And God said, Let there be light. " * 25
    tokens = len(runtime.encode(crowded))
    assert 256 - 64 < tokens < 256
    assert runtime.check({"prompt": crowded})["max_tokens"] == 256 - tokens
    # an empty prompt starts from the end-of-text token
    empty = runtime.check({"prompt": "", "max_tokens": 5, "temperature": 0})
    assert list(runtime.stream(empty))[-1]["prompt_tokens"] == 1


def test_a_closed_stream_runs_no_further_model_step(runtime, monkeypatch) -> None:
    """Cancellation: the consumer closes the generator after two pieces; not one more step
    of the model runs, though 200 tokens were asked for."""
    steps = []
    real = runtime.session.run

    class Counting:
        def run(self, *args, **kwargs):
            steps.append(1)
            return real(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(real.__self__, name)

    monkeypatch.setattr(runtime, "session", Counting())
    stream = runtime.stream({"prompt": "And God said", "max_tokens": 200, "temperature": 0})
    next(stream), next(stream)
    taken = len(steps)
    stream.close()
    assert taken < 10 and len(steps) == taken


def test_tokens_per_second_on_one_thread(runtime) -> None:
    """The KV cache keeps each token one position's work: far above what streaming needs."""
    import time

    started = time.perf_counter()
    last = list(runtime.stream({"prompt": "In the beginning", "max_tokens": 200}))[-1]
    rate = last["completion_tokens"] / (time.perf_counter() - started)
    assert last["completion_tokens"] > 20 and rate > 100, rate


def test_engines_missing_make_it_unavailable_with_the_install_hint(monkeypatch) -> None:
    assert unavailable_reason("onnx-textgen", TEXTGEN_OPTIONS) is None
    monkeypatch.setattr(OnnxTextgenRuntime, "engines", ("sluice_absent_tokenizers",))
    reason = unavailable_reason("onnx-textgen", TEXTGEN_OPTIONS)
    assert reason and "pip install -r requirements-models.txt" in reason


def test_a_broken_artifact_is_unavailable_not_a_crash() -> None:
    from inference.runtimes import RuntimeUnavailable

    row = OnnxTextgenRuntime(VersionSpec(id=2, model="x", version="1", runtime="onnx-textgen"))
    with pytest.raises(RuntimeUnavailable, match="not an onnx-textgen zip"):
        row.load(b"not a zip")


@pytest.mark.django_db
def test_install_registers_the_committed_artifact_once_without_training(monkeypatch) -> None:
    def no_training(*args, **kwargs):
        raise AssertionError("installing textgen must not train")

    monkeypatch.setattr(textgen, "textgen_build", no_training)
    version, created = install(TEXTGEN, actor="test")
    assert created
    assert version.runtime == ModelVersion.Runtime.ONNX_TEXTGEN
    assert version.model.task == "text"
    assert version.state == ModelVersion.State.ACTIVE and version.traffic_weight == 100
    assert version.input_schema["properties"]["max_tokens"]["maximum"] == 255
    again, created_again = install(TEXTGEN, actor="test")
    assert (again.pk, created_again) == (version.pk, False)


@pytest.mark.django_db
def test_install_replaces_an_older_database_s_textgen(monkeypatch) -> None:
    """A database from before the ONNX export has textgen on the transformers runtime (the
    trained model, or a placeholder without an artifact where torch was missing): the ONNX
    version is promoted and the old ones retired."""
    from inference.registry.services import version_register

    placeholder = version_register(
        model_name=TEXTGEN,
        version="1",
        runtime=ModelVersion.Runtime.TRANSFORMERS,
        runtime_options=TEXTGEN_OPTIONS,
        task="text",
        actor="test",
    )
    placeholder.activate(actor="test")
    trained = version_register(
        model_name=TEXTGEN,
        version="2",
        runtime=ModelVersion.Runtime.TRANSFORMERS,
        artifact=b"the zip of a trained model",
        artifact_filename="textgen.zip",
        runtime_options=TEXTGEN_OPTIONS,
        task="text",
        actor="test",
    )
    trained.activate(actor="test")
    real, created = install(TEXTGEN, actor="test")
    assert created and real.version == "3" and real.checksum
    real.model.refresh_from_db()
    assert real.model.stable_version_id == real.pk
    for old in (placeholder, trained):
        old.refresh_from_db()
        assert old.state == ModelVersion.State.RETIRED


# --- the rebuild (torch and transformers: the dev install and CI) ------------------------------


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(textgen, "cache_dir", lambda: tmp_path / "cache")


# Training is about a minute of two CPU threads; several minutes on a loaded machine.
@pytest.mark.timeout(1200)
def test_a_rebuild_gives_the_committed_artifact_s_greedy_tokens(fresh_cache, tmp_path) -> None:
    """The build command trains afresh (no cache), exports, and the rebuilt model chooses the
    same greedy tokens as the committed artifact; and the ONNX export chooses what the trained
    torch model's own ``generate`` chooses."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    built = textgen.textgen_build(use_cache=False)
    assert not built.cached
    assert built.loss < math.log(textgen.Recipe.vocab_size) - 0.5  # learned about the text
    again = textgen.textgen_build()
    assert again.cached and again.archive == built.archive
    rebuilt = textgen.export(built.archive)
    assert textgen.export(built.archive) == rebuilt  # the export is deterministic
    assert textgen.greedy_tokens(rebuilt) == textgen.greedy_tokens(textgen.ARTIFACT.read_bytes())
    directory = tmp_path / "hf"
    with zipfile.ZipFile(io.BytesIO(built.archive)) as archive:
        archive.extractall(directory)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    prompts = [p for p in textgen.CHECK_PROMPTS if p]
    ours = textgen.greedy_tokens(rebuilt, tuple(prompts), n=16)
    for prompt, expected in zip(prompts, ours, strict=True):
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=16, do_sample=False, pad_token_id=0)
        eos = tokenizer.eos_token_id  # generate stops after it; ours runs on
        if eos in expected:
            expected = expected[: expected.index(eos) + 1]
        assert out[0, ids["input_ids"].shape[1] :].tolist() == expected, prompt
