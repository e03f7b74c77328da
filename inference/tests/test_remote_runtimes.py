"""The remote runtimes against a real (misbehaving on cue) HTTP server: one v2 request per
batch, pooled connections, retries with backoff and Retry-After, the upstream's circuit
breaker, timeouts, API keys by reference, and token streaming over SSE."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest

from inference.runtimes import runtime_class, unavailable_reason
from inference.runtimes.base import (
    Runtime,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    VersionSpec,
)
from inference.runtimes.kserve import KServeRuntime
from inference.runtimes.openai_remote import OpenAIRemoteRuntime
from inference.tests.upstream_server import Drop, FakeUpstream, Reply, Stream, fake_upstream
from testing.processes import free_port

INFER = "/v2/models/model/infer"
FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05}
_ids = itertools.count(1)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with fake_upstream() as server:
        yield server


@pytest.fixture
def loaded() -> Iterator[Any]:
    """``loaded(runtime, **options)``: a loaded and warmed runtime, closed after the test."""
    runtimes: list[Runtime] = []

    def build(name: str, *, model: str = "model", **options: Any) -> Any:
        spec = VersionSpec(id=next(_ids), model=model, version="1", runtime=name, options=options)
        runtime = runtime_class(name)(spec)
        runtime.load(None)
        runtime.warmup()
        runtimes.append(runtime)
        return runtime

    yield build
    for runtime in runtimes:
        runtime.close()


# --- KServe v2 --------------------------------------------------------------------------------


def test_it_sends_a_batch_as_one_v2_request(upstream, loaded) -> None:
    runtime = loaded("kserve", url=upstream.url, inputs={"x": {"field": "n"}})
    assert runtime.predict([{"n": 1}, {"n": 2}, {"n": 3}]) == [{"y": 2}, {"y": 4}, {"y": 6}]
    [call] = upstream.calls(INFER)
    # Datatype and item shape came from the remote metadata (INT64, [-1, 1]).
    assert call.body["inputs"] == [
        {"name": "x", "shape": [3, 1], "datatype": "INT64", "data": [1, 2, 3]}
    ]
    assert "outputs" not in call.body


def test_it_asks_for_and_renames_the_outputs_it_is_told(upstream, loaded) -> None:
    runtime = loaded(
        "kserve",
        url=upstream.url,
        outputs=["doubled"],
        output_tensors={"doubled": "y"},
        parameters={"content_type": "np"},
    )
    assert runtime.predict([{"x": 5}]) == [{"doubled": 10}]
    [call] = upstream.calls(INFER)
    assert call.body["outputs"] == [{"name": "y"}]
    assert call.body["parameters"] == {"content_type": "np"}


def test_it_reuses_one_pooled_connection(upstream, loaded) -> None:
    runtime = loaded("kserve", url=upstream.url)
    for n in range(5):
        runtime.predict([{"x": n}])
    assert len(upstream.seen) == 7  # metadata, ready, five calls
    assert len({seen.port for seen in upstream.seen}) == 1


def test_it_retries_5xx_with_jittered_backoff(upstream, loaded) -> None:
    runtime = loaded("kserve", url=upstream.url, retries=2, **FAST)
    upstream.plan(INFER, Reply(503), Reply(500, "Traceback …\nValueError: boom"))
    assert runtime.predict([{"x": 4}]) == [{"y": 8}]
    calls = upstream.calls(INFER)
    assert len(calls) == 3
    gaps = [b.at - a.at for a, b in itertools.pairwise(calls)]
    assert all(gap < 0.5 for gap in gaps), gaps  # full jitter capped at backoff_max_s


def test_it_gives_up_after_its_retries_and_logs_the_upstream_reason(
    upstream, loaded, caplog
) -> None:
    runtime = loaded("kserve", url=upstream.url, retries=2, **FAST)
    upstream.plan(INFER, *[Reply(500, "Traceback …\nValueError: X has 2 features")] * 3)
    with pytest.raises(UpstreamError) as caught:
        runtime.predict([{"x": 1}])
    assert caught.value.status == 502 and caught.value.upstream_status == 500
    assert "answered 500" in str(caught.value)
    # The upstream's text and URL are the operator's: in the log, not in the error.
    assert "X has 2 features" not in str(caught.value)
    assert upstream.url not in str(caught.value)
    assert "answered 500: ValueError: X has 2 features" in caplog.text
    assert len(upstream.calls(INFER)) == 3


def test_it_waits_as_long_as_retry_after_asks(upstream, loaded) -> None:
    runtime = loaded("kserve", url=upstream.url, retries=1, **FAST)
    upstream.plan(INFER, Reply(429, {"error": "slow down"}, headers={"Retry-After": "1"}))
    assert runtime.predict([{"x": 1}]) == [{"y": 2}]
    first, second = upstream.calls(INFER)
    assert second.at - first.at >= 0.95


def test_it_does_not_wait_past_its_retry_budget(upstream, loaded) -> None:
    runtime = loaded("kserve", url=upstream.url, retries=3, retry_budget_s=2, **FAST)
    upstream.plan(INFER, Reply(503, {"error": "loading"}, headers={"Retry-After": "120"}))
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable) as caught:
        runtime.predict([{"x": 1}])
    assert time.monotonic() - started < 1
    assert caught.value.status == 503 and caught.value.retry_after == 120
    assert len(upstream.calls(INFER)) == 1


def test_client_errors_are_neither_retried_nor_held_against_the_upstream(upstream, loaded) -> None:
    runtime = loaded("kserve", url=upstream.url, retries=3, breaker_failures=1, **FAST)
    upstream.plan(INFER, Reply(400, {"error": "invalid tensor x"}))
    with pytest.raises(UpstreamError, match=r"answered 400$") as caught:
        runtime.predict([{"x": 1}])
    assert caught.value.status == 502 and len(upstream.calls(INFER)) == 1
    assert runtime.predict([{"x": 1}]) == [{"y": 2}]  # the circuit stayed closed


def test_a_read_timeout_is_a_504_and_is_not_retried(upstream, loaded) -> None:
    runtime = loaded("kserve", url=upstream.url, read_timeout_s=0.2, retries=3, **FAST)
    upstream.plan(INFER, Reply(delay=1.0))
    with pytest.raises(UpstreamTimeout, match=r"did not answer within 0\.2 s") as caught:
        runtime.predict([{"x": 1}])
    assert caught.value.status == 504 and len(upstream.calls(INFER)) == 1


def test_a_dropped_connection_is_sent_again(upstream, loaded) -> None:
    runtime = loaded("kserve", url=upstream.url, retries=1, **FAST)
    upstream.plan(INFER, Drop())
    assert runtime.predict([{"x": 3}]) == [{"y": 6}]
    assert len(upstream.calls(INFER)) == 2


def test_an_open_circuit_ends_the_retries(upstream, loaded) -> None:
    runtime = loaded("kserve", url=upstream.url, retries=5, breaker_failures=2, **FAST)
    upstream.plan(INFER, *[Reply(502)] * 5)
    with pytest.raises(UpstreamUnavailable, match="circuit open"):
        runtime.predict([{"x": 1}])
    assert len(upstream.calls(INFER)) == 2  # every attempt counted; the third was refused


def test_an_unreachable_upstream_is_retried_then_unavailable(caplog) -> None:
    spec = VersionSpec(
        id=next(_ids),
        model="model",
        version="1",
        runtime="kserve",
        options={"url": f"http://127.0.0.1:{free_port()}", "retries": 2, **FAST},
    )
    runtime = KServeRuntime(spec)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable, match="unreachable") as caught:
        runtime.load(None)
    assert caught.value.status == 503 and time.monotonic() - started < 2
    assert runtime.upstream is None  # the client was closed
    attempts = [r for r in caplog.records if "ConnectError" in r.getMessage()]
    assert len(attempts) == 3  # the first try and two retries


def test_the_breaker_opens_fails_fast_probes_once_and_closes(upstream, loaded) -> None:
    options = {"url": upstream.url, "retries": 0, "breaker_failures": 2, "breaker_cooldown_s": 0.5}
    first = loaded("kserve", **options)
    second = loaded("kserve", **options)  # another version on the same upstream
    upstream.plan(INFER, Reply(502), Reply(502))
    for _ in range(2):
        with pytest.raises(UpstreamError, match="answered 502"):
            first.predict([{"x": 1}])
    for runtime in (first, second):  # open: refused without a call, for every version
        with pytest.raises(UpstreamUnavailable, match="circuit open") as caught:
            runtime.predict([{"x": 1}])
        assert caught.value.retry_after == 0.5
    assert len(upstream.calls(INFER)) == 2
    time.sleep(0.6)
    upstream.plan(INFER, Reply(502))  # half-open: the probe fails → open again
    with pytest.raises(UpstreamError, match="answered 502"):
        second.predict([{"x": 1}])
    with pytest.raises(UpstreamUnavailable, match="circuit open"):
        first.predict([{"x": 1}])
    time.sleep(0.6)
    assert first.predict([{"x": 2}]) == [{"y": 4}]  # the probe succeeds → closed
    assert second.predict([{"x": 3}]) == [{"y": 6}]
    assert len(upstream.calls(INFER)) == 5


def test_a_ragged_batch_goes_out_one_request_per_item(upstream, loaded) -> None:
    runtime = loaded("kserve", url=upstream.url, inputs={"x": {"field": "v", "shape": [-1]}})
    upstream.plan(
        INFER,
        Reply(body={"outputs": [{"name": "y", "shape": [1, 2], "data": [1, 2]}]}),
        Reply(body={"outputs": [{"name": "y", "shape": [1, 3], "data": [3, 4, 5]}]}),
    )
    assert runtime.predict([{"v": [1, 2]}, {"v": [3, 4, 5]}]) == [{"y": [1, 2]}, {"y": [3, 4, 5]}]
    assert [c.body["inputs"][0]["shape"] for c in upstream.calls(INFER)] == [[1, 2], [1, 3]]


def test_an_answer_of_the_wrong_size_is_a_502(upstream, loaded) -> None:
    runtime = loaded("kserve", url=upstream.url)
    upstream.plan(INFER, Reply(body={"outputs": [{"name": "y", "shape": [1, 1], "data": [2]}]}))
    with pytest.raises(UpstreamError, match="answered 1 rows of 'y' for 2 inputs"):
        runtime.predict([{"x": 1}, {"x": 2}])


def test_a_remote_model_it_does_not_find_is_unavailable(upstream) -> None:
    spec = VersionSpec(
        id=next(_ids), model="nope", version="1", runtime="kserve", options={"url": upstream.url}
    )
    with pytest.raises(UpstreamUnavailable, match=r"answered 404$"):
        KServeRuntime(spec).load(None)


# --- availability and keys --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("runtime", "options", "reason"),
    [
        ("kserve", {}, "url is required"),
        ("kserve", {"url": "ftp://x"}, "http:// or https://"),
        ("kserve", {"url": "http://u:pw@x"}, "must not carry credentials"),
        ("kserve", {"url": "http://x", "api_key": "sk-1"}, "would store a secret"),
        ("openai", {"url": "http://x", "headers": {"A": "b"}}, "would store a secret"),
        ("kserve", {"url": "http://x", "retries": 99}, "retries must be within 0..10"),
        ("kserve", {"url": "http://x", "inputs": {"x": {"datatype": "F32"}}}, "not a v2 type"),
        ("openai", {"url": "http://x", "endpoint": "images"}, "endpoint must be one of"),
        ("openai", {"url": "http://x", "params": {"stream": True}}, "must not set ['stream']"),
        ("openai", {"url": "http://x", "api_key_env": "SECRET_KEY"}, "UPSTREAM_KEY_<NAME>"),
        ("openai", {"url": "http://x", "api_key_env": "UPSTREAM_KEY_NONE"}, "is not set"),
    ],
)
def test_it_reports_invalid_options_as_unavailable(runtime, options, reason) -> None:
    found = unavailable_reason(runtime, options)
    assert found is not None and found.startswith("unavailable: invalid runtime_options")
    assert reason in found


def test_it_reports_a_missing_engine_with_the_install_hint(monkeypatch) -> None:
    from inference.runtimes import remote

    monkeypatch.setattr(remote, "ENGINES", ("httpx", "no_such_engine_here"))
    assert unavailable_reason("kserve", {"url": "http://x"}) == (
        "unavailable: no_such_engine_here is not installed — "
        "install with pip install -r requirements-models.txt"
    )
    assert unavailable_reason("openai", {"url": "http://x"}) is not None
    assert unavailable_reason("onnx", {}) is None


def test_it_sends_the_api_key_it_is_pointed_at(upstream, loaded, settings) -> None:
    settings.INFERENCE_UPSTREAM_KEYS = {"UPSTREAM_KEY_LLM": "sk-upstream-1"}
    assert (
        unavailable_reason("openai", {"url": "http://x", "api_key_env": "UPSTREAM_KEY_LLM"}) is None
    )
    loaded("openai", url=f"{upstream.url}/v1", model="fake-llm", api_key_env="UPSTREAM_KEY_LLM")
    loaded("kserve", url=upstream.url, api_key_env="UPSTREAM_KEY_LLM", api_key_header="X-API-Key")
    assert upstream.calls("/v1/models")[0].headers["authorization"] == "Bearer sk-upstream-1"
    assert upstream.calls("/v2/models/model")[0].headers["x-api-key"] == "sk-upstream-1"


# --- OpenAI-compatible ------------------------------------------------------------------------


def test_chat_answers_each_item(upstream, loaded) -> None:
    runtime = loaded("openai", url=f"{upstream.url}/v1", model="fake-llm", params={"max_tokens": 9})
    out = runtime.predict(
        [{"prompt": "hello there"}, {"messages": [{"role": "user", "content": "hi you"}]}]
    )
    assert out == [
        {"text": "hello there", "finish_reason": "stop"},
        {"text": "hi you", "finish_reason": "stop"},
    ]
    bodies = [c.body for c in upstream.calls("/v1/chat/completions")]
    assert all(b["model"] == "fake-llm" and b["max_tokens"] == 9 for b in bodies)


def test_completions_send_a_batch_as_one_request_and_keep_order(upstream, loaded) -> None:
    runtime = loaded("openai", url=f"{upstream.url}/v1", model="fake-llm", endpoint="completions")
    out = runtime.predict([{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c", "max_tokens": 3}])
    assert [o["text"] for o in out] == ["A", "B", "C"]
    calls = upstream.calls("/v1/completions")
    assert [c.body["prompt"] for c in calls] == [["a", "b"], ["c"]]  # grouped by settings


def test_embeddings_send_a_batch_as_one_request(upstream, loaded) -> None:
    runtime = loaded("openai", url=f"{upstream.url}/v1", model="fake-embed", endpoint="embeddings")
    assert runtime.predict([{"text": "ab"}, {"text": "abcd"}]) == [
        {"embedding": [2.0, 1.0]},
        {"embedding": [4.0, 1.0]},
    ]
    [call] = upstream.calls("/v1/embeddings")
    assert call.body == {"model": "fake-embed", "input": ["ab", "abcd"], "encoding_format": "float"}


def test_it_streams_tokens_as_they_arrive(upstream, loaded) -> None:
    runtime = loaded("openai", url=f"{upstream.url}/v1", model="fake-llm")
    started = time.monotonic()
    arrivals = []
    chunks = []
    for chunk in runtime.stream({"prompt": "one two three four five"}):
        arrivals.append(time.monotonic() - started)
        chunks.append(chunk)
    assert [c["text"] for c in chunks] == ["one ", "two ", "three ", "four ", "five ", ""]
    assert chunks[-1]["finish_reason"] == "stop"
    # 7 events 50 ms apart: the first token is passed on long before the last one exists.
    assert arrivals[0] < arrivals[-1] - 0.2
    [call] = upstream.calls("/v1/chat/completions")
    assert call.body["stream"] is True


def test_a_stream_is_retried_until_it_starts(upstream, loaded) -> None:
    runtime = loaded("openai", url=f"{upstream.url}/v1", model="fake-llm", retries=1, **FAST)
    upstream.plan("/v1/chat/completions", Reply(503, {"error": {"message": "warming up"}}))
    assert "".join(c["text"] for c in runtime.stream({"prompt": "a b"})) == "a b "
    assert len(upstream.calls("/v1/chat/completions")) == 2


def test_an_error_event_mid_stream_is_a_502(upstream, loaded) -> None:
    runtime = loaded("openai", url=f"{upstream.url}/v1", model="fake-llm")
    token = '{"choices": [{"index": 0, "delta": {"content": "x"}}]}'
    upstream.plan(
        "/v1/chat/completions",
        Stream([token, '{"error": {"message": "out of memory"}}']),
    )
    chunks = runtime.stream({"prompt": "go"})
    assert next(chunks) == {"text": "x"}
    with pytest.raises(UpstreamError, match=r"failed mid-stream$"):
        next(chunks)


def test_an_upstream_that_does_not_stream_gives_one_chunk(upstream, loaded) -> None:
    runtime = loaded("openai", url=f"{upstream.url}/v1", model="fake-llm", endpoint="completions")
    assert list(runtime.stream({"prompt": "abc"})) == [
        {"text": "ABC"},
        {"text": "", "finish_reason": "length"},
    ]


def test_a_stream_that_stalls_past_the_read_timeout_is_a_504(upstream, loaded) -> None:
    runtime = loaded("openai", url=f"{upstream.url}/v1", model="fake-llm", read_timeout_s=0.3)
    token = '{"choices": [{"index": 0, "delta": {"content": "x"}}]}'
    upstream.plan("/v1/chat/completions", Stream([token, token], delay=0.6))
    with pytest.raises(UpstreamTimeout):
        list(runtime.stream({"prompt": "go"}))


def test_warmup_fails_when_the_upstream_does_not_serve_the_model(upstream) -> None:
    spec = VersionSpec(
        id=next(_ids),
        model="m",
        version="1",
        runtime="openai",
        options={"url": f"{upstream.url}/v1", "model": "not-there"},
    )
    runtime = OpenAIRemoteRuntime(spec)
    runtime.load(None)
    with pytest.raises(UpstreamUnavailable, match="does not serve model 'not-there'"):
        runtime.warmup()
    assert runtime.upstream is None


# --- metrics ----------------------------------------------------------------------------------


def _calls(model: str, outcome: str) -> float:
    from prometheus_client import REGISTRY

    labels = {"model": model, "outcome": outcome}
    return REGISTRY.get_sample_value("sluice_upstream_calls_total", labels) or 0.0


def test_it_counts_every_attempt_by_outcome(upstream, loaded) -> None:
    upstream.plan("/v2/models/metered", Reply(body={}))
    upstream.plan("/v2/models/metered/ready", Reply(body={}))
    runtime = loaded("kserve", url=upstream.url, model="metered", retries=1, **FAST)
    upstream.plan("/v2/models/metered/infer", Reply(503))
    upstream.plan("/v2/models/metered/infer", Reply(body={"outputs": []}))
    before = {o: _calls("metered", o) for o in ("ok", "server_error")}
    runtime.predict([{"x": 1}])
    assert _calls("metered", "server_error") - before["server_error"] == 1
    assert _calls("metered", "ok") - before["ok"] == 1


def test_it_counts_a_stream_the_reader_left(upstream, loaded) -> None:
    runtime = loaded("openai", url=f"{upstream.url}/v1", model="fake-llm")
    before = _calls("fake-llm", "cancelled")
    chunks = runtime.stream({"prompt": "one two three"})
    assert next(chunks) == {"text": "one "}
    chunks.close()  # the client went away: the connection is closed, the upstream stops
    assert _calls("fake-llm", "cancelled") - before == 1
