"""Remote OpenAI-compatible upstream (vLLM, llama.cpp's server, TGI, another Sluice…) over
HTTP: chat completions, completions or embeddings, with real token streaming.

Common options (url, timeouts, retries, breaker, api_key_env) are in
:mod:`inference.runtimes.remote`; ``url`` is the API's base, ``…/v1`` included. This module adds:

    endpoint: "chat" (default), "completions" or "embeddings"
    model:    the upstream's model name (default: the Sluice model's name)
    params:   request fields sent with every call, e.g. {"max_tokens": 256, "temperature": 0.2}

Items and answers (what the version's input schema and the API see):

    chat:        {"messages": [{"role", "content"}, …]} or {"prompt": "…"} (one user message),
                 optional max_tokens, temperature, top_p, stop, seed → {"text", "finish_reason"}
    completions: {"prompt": "…"} and the same optional fields → {"text", "finish_reason"}
    embeddings:  {"text": "…"} → {"embedding": [floats]}

A batch is one request where the API allows it: every text of an embeddings batch in one
``input`` list, every prompt of a completions batch that shares its parameters in one
``prompt`` list; chat requests (one conversation each) go out concurrently over the pool.
``stream()`` sends ``"stream": true`` and yields each token's text as it arrives
(``{"text": "<delta>"}``), then ``{"text": "", "finish_reason": …}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

from inference.runtimes import remote
from inference.runtimes.base import (
    Item,
    Runtime,
    UpstreamError,
    UpstreamUnavailable,
    missing_engine,
)
from inference.runtimes.remote import InvalidOptions, RemoteOptions, Upstream

log = logging.getLogger(__name__)

ENDPOINTS = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
}
# Per-item generation settings an input may carry (everything else in an item is ignored).
ITEM_PARAMS = ("max_tokens", "temperature", "top_p", "stop", "seed")
# Request fields the runtime owns: ``params`` may not set them.
OWNED = frozenset({"model", "stream", "messages", "prompt", "input", "n", "encoding_format"})


@dataclass(frozen=True)
class OpenAIOptions:
    remote: RemoteOptions
    endpoint: str
    model: str | None
    params: dict[str, Any]

    @classmethod
    def parse(cls, options: dict[str, Any]) -> OpenAIOptions:
        remote = RemoteOptions.parse(options)
        endpoint = options.get("endpoint", "chat")
        if endpoint not in ENDPOINTS:
            raise InvalidOptions(f"endpoint must be one of {sorted(ENDPOINTS)}, not {endpoint!r}")
        model = options.get("model")
        if model is not None and (not isinstance(model, str) or not model):
            raise InvalidOptions("model must be a non-empty string")
        params = options.get("params") or {}
        if not isinstance(params, dict):
            raise InvalidOptions("params must be an object of request fields")
        owned = sorted(OWNED & set(params))
        if owned:
            raise InvalidOptions(f"params must not set {owned}: the runtime sends those")
        return cls(remote=remote, endpoint=endpoint, model=model, params=dict(params))


class OpenAIRemoteRuntime(Runtime):
    name = "openai"
    engines: ClassVar[tuple[str, ...]] = ("httpx_sse",)

    upstream: Upstream | None = None
    options: OpenAIOptions
    _pool: ThreadPoolExecutor | None = None

    @classmethod
    def unavailable(cls, options: dict[str, Any]) -> str | None:
        reason = missing_engine((*remote.ENGINES, *cls.engines), remote.REMOTE_HINT)
        if reason:
            return reason
        try:
            OpenAIOptions.parse(options)
        except InvalidOptions as exc:
            return f"unavailable: invalid runtime_options: {exc}"
        return None

    @property
    def model(self) -> str:
        return self.options.model or self.spec.model

    def load(self, artifact: bytes | None) -> None:
        reason = self.unavailable(self.spec.options)
        if reason:
            raise UpstreamUnavailable(reason)
        self.options = OpenAIOptions.parse(self.spec.options)
        self.upstream = Upstream(self.options.remote, label=self.spec.label, model=self.spec.model)
        if self.options.endpoint == "chat":
            self._pool = ThreadPoolExecutor(
                max_workers=self.options.remote.max_connections,
                thread_name_prefix=f"openai-{self.spec.label}",
            )

    def warmup(self) -> None:
        """The upstream is up and serves the model (``GET /models``; an upstream without
        that endpoint is taken at its word)."""
        assert self.upstream is not None
        try:
            listed = self.upstream.request("GET", "/models").json()
        except UpstreamError as exc:
            if exc.upstream_status in (404, 405):
                return
            self.close()
            raise
        except Exception:
            self.close()
            raise
        if not isinstance(listed, dict) or not isinstance(listed.get("data"), list):
            return  # not OpenAI's list shape: nothing to check the model against
        ids = {str(m.get("id")) for m in listed["data"] if isinstance(m, dict)}
        if self.model not in ids:
            self.close()
            raise UpstreamUnavailable(
                f"unavailable: the upstream of {self.spec.label} does not serve model "
                f"{self.model!r}"
            )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    # -- predict ---------------------------------------------------------------------------

    def predict(self, batch: list[Item]) -> list[Item]:
        if not batch:
            return []
        if self.options.endpoint == "embeddings":
            return self._embed(batch)
        if self.options.endpoint == "completions":
            return self._complete(batch)
        if len(batch) == 1 or self._pool is None:
            return [self._chat(item) for item in batch]
        return list(self._pool.map(self._chat, batch))

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        assert self.upstream is not None
        answer = self.upstream.request("POST", ENDPOINTS[self.options.endpoint], body=body).json()
        if not isinstance(answer, dict):
            raise UpstreamError(f"the upstream of {self.spec.label} sent {type(answer).__name__}")
        return answer

    def _body(self, item: Item) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, **self.options.params}
        body.update({k: item[k] for k in ITEM_PARAMS if item.get(k) is not None})
        if self.options.endpoint == "chat":
            messages = item.get("messages")
            if not messages:
                prompt = item.get("prompt")
                if not isinstance(prompt, str):
                    raise UpstreamError(f"{self.spec.label}: an item needs messages or a prompt")
                messages = [{"role": "user", "content": prompt}]
            body["messages"] = messages
        else:
            if not isinstance(item.get("prompt"), str):
                raise UpstreamError(f"{self.spec.label}: an item needs a string prompt")
            body["prompt"] = item["prompt"]
        return body

    def _embed(self, batch: list[Item]) -> list[Item]:
        texts = []
        for item in batch:
            text = item.get("text", item.get("input"))
            if not isinstance(text, str):
                raise UpstreamError(f"{self.spec.label}: an embeddings item needs a string text")
            texts.append(text)
        body = {"model": self.model, **self.options.params, "input": texts}
        body["encoding_format"] = "float"
        rows = self._choices(self._post(body), "data", len(batch))
        return [{"embedding": [float(x) for x in row["embedding"]]} for row in rows]

    def _complete(self, batch: list[Item]) -> list[Item]:
        """One request per group of items that share their settings, prompts as a list."""
        groups: dict[str, list[int]] = {}
        for index, item in enumerate(batch):
            settings = {k: item.get(k) for k in ITEM_PARAMS}
            groups.setdefault(json.dumps(settings, sort_keys=True, default=str), []).append(index)
        out: list[Item] = [{} for _ in batch]
        for indexes in groups.values():
            body = self._body(batch[indexes[0]])
            body["prompt"] = [self._body(batch[i])["prompt"] for i in indexes]
            choices = self._choices(self._post(body), "choices", len(indexes))
            for index, choice in zip(indexes, choices, strict=True):
                out[index] = {
                    "text": str(choice.get("text") or ""),
                    "finish_reason": choice.get("finish_reason"),
                }
        return out

    def _chat(self, item: Item) -> Item:
        [choice] = self._choices(self._post(self._body(item)), "choices", 1)
        message = choice.get("message") or {}
        return {
            "text": str(message.get("content") or ""),
            "finish_reason": choice.get("finish_reason"),
        }

    def _choices(self, answer: dict[str, Any], member: str, count: int) -> list[dict[str, Any]]:
        """``answer[member]`` ordered by ``index``, exactly ``count`` of them."""
        rows = answer.get(member)
        if not isinstance(rows, list) or len(rows) != count:
            got = len(rows) if isinstance(rows, list) else "no"
            raise UpstreamError(
                f"the upstream of {self.spec.label} answered {got} {member} for {count} inputs"
            )
        if all(isinstance(r, dict) and isinstance(r.get("index"), int) for r in rows):
            rows = sorted(rows, key=lambda r: r["index"])
        return rows

    # -- stream ----------------------------------------------------------------------------

    def stream(self, item: Item) -> Iterator[Item]:
        if self.options.endpoint == "embeddings":
            yield from super().stream(item)
            return
        from httpx_sse import EventSource

        assert self.upstream is not None
        body = {**self._body(item), "stream": True}
        finish: str | None = None
        path = ENDPOINTS[self.options.endpoint]
        with self.upstream.stream("POST", path, body=body) as response:
            kind = response.headers.get("content-type", "").partition(";")[0].strip()
            if kind != "text/event-stream":
                # An upstream that ignores "stream": the whole answer as one chunk.
                response.read()
                answer = response.json()
                if not isinstance(answer, dict):
                    raise UpstreamError(f"the upstream of {self.spec.label} sent no choices")
                [choice] = self._choices(answer, "choices", 1)
                text = (choice.get("message") or {}).get("content") or choice.get("text") or ""
                yield {"text": str(text)}
                yield {"text": "", "finish_reason": choice.get("finish_reason")}
                return
            for event in EventSource(response).iter_sse():
                if event.data.strip() == "[DONE]":
                    break
                if not event.data.strip():
                    continue
                try:
                    chunk = json.loads(event.data)
                except ValueError as exc:
                    raise UpstreamError(
                        f"the upstream of {self.spec.label} sent a malformed event"
                    ) from exc
                if isinstance(chunk, dict) and chunk.get("error"):
                    error = chunk["error"]
                    message = error.get("message") if isinstance(error, dict) else error
                    # The upstream's text is the operator's: logged, not passed on.
                    log.warning("upstream of %s failed mid-stream: %s", self.spec.label, message)
                    raise UpstreamError(f"the upstream of {self.spec.label} failed mid-stream")
                choices = chunk.get("choices") if isinstance(chunk, dict) else None
                for choice in choices or []:
                    if self.options.endpoint == "chat":
                        text = (choice.get("delta") or {}).get("content")
                    else:
                        text = choice.get("text")
                    if text:
                        yield {"text": str(text)}
                    finish = choice.get("finish_reason") or finish
        yield {"text": "", "finish_reason": finish}
