"""Causal text generation with ONNX Runtime and the ``tokenizers`` library: no torch.

It serves the built-in ``textgen`` model (:mod:`inference.registry.textgen` writes its artifact) and
any model exported the same way. The artifact is a zip of

- ``model.onnx``: inputs ``input_ids`` and ``positions`` (int64 [B, S]), ``mask`` (float32
  [S, P + S], added to the attention scores) and ``past_key_L`` / ``past_value_L`` per layer
  ([B, heads, P, head_dim]); outputs ``logits`` of the last position ([B, vocab]) and
  ``present_key_L`` / ``present_value_L``: a KV cache, so each new token costs one position;
- ``tokenizer.json``: the ``tokenizers`` file;
- ``config.json``: ``n_positions`` (the context window), ``n_layer``, ``n_head``, ``n_embd``,
  ``eos_token_id`` and ``eos_token``.

Input items and outputs are those of the ``transformers`` runtime (the OpenAI-compatible
endpoints call both alike): ``{"prompt", "max_tokens"?, "temperature"?, "top_p"?, "stop"?,
"messages"?}`` → ``{"text", "finish_reason", "prompt_tokens", "completion_tokens"}``; the same
context-window checks (a 422 naming ``prompt`` or ``max_tokens``). ``messages`` is ignored:
the tokenizer has no chat template, so the endpoint's ``role: content`` prompt is used.

``stream(item)`` yields ``{"text": piece}`` per decoded piece, then the whole answer. It is a
plain generator that runs one model step per token, so a consumer that stops iterating (a
cancelled or disconnected stream) stops the generation: no step runs after ``close()``.

runtime_options:
    max_new_tokens: default completion length (64); ``max_tokens_limit`` caps requests (1024)
    temperature:    default 0 (greedy); ``top_k`` (default 0: off), ``top_p`` (default 1)
    seed:           seeds the sampler (default: a fresh seed per request)
    threads:        ONNX Runtime intra-op threads (default 1: the model is tiny)
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from typing import IO, Any, ClassVar

from inference.runtimes.base import (
    INSTALL_HINT,
    Item,
    Runtime,
    RuntimeUnavailable,
    missing_engine,
)
from inference.runtimes.text import Pieces, bound_max_tokens, fit_context

# Added to the attention scores a token may not look at (a finite number: no NaN from -inf).
_MASKED = -1e9


class OnnxTextgenRuntime(Runtime):
    name = "onnx-textgen"
    engines: ClassVar[tuple[str, ...]] = ("onnxruntime", "tokenizers")

    session: Any = None
    tokenizer: Any = None
    context: int = 0
    eos: int | None = None
    eos_token: str = ""
    layers: int = 0
    heads: int = 0
    head_dim: int = 0

    @classmethod
    def unavailable(cls, options: dict[str, Any]) -> str | None:
        return missing_engine(cls.engines, INSTALL_HINT)

    @classmethod
    def on_register(
        cls, options: dict[str, Any], artifact: IO[bytes] | None, input_schema: dict[str, Any]
    ) -> dict[str, Any]:
        """The context window in the artifact's ``config.json`` bounds ``max_tokens``
        (:func:`inference.runtimes.text.bound_max_tokens`)."""
        config = _read_config(artifact)
        context = config.get("n_positions") if config else None
        if not isinstance(context, int) or context < 2:
            return input_schema
        return bound_max_tokens(input_schema, context, options)

    # --- loading ------------------------------------------------------------------------------

    def load(self, artifact: bytes | None) -> None:
        reason = self.unavailable(self.spec.options)
        if reason:
            raise RuntimeUnavailable(reason)
        if not artifact:
            raise RuntimeUnavailable(f"unavailable: {self.spec.label} has no artifact")
        import onnxruntime as ort
        from tokenizers import Tokenizer

        try:
            with zipfile.ZipFile(io.BytesIO(artifact)) as archive:
                config = json.loads(archive.read("config.json"))
                model = archive.read("model.onnx")
                tokenizer = archive.read("tokenizer.json").decode()
            self.tokenizer = Tokenizer.from_str(tokenizer)
            options = ort.SessionOptions()
            options.intra_op_num_threads = int(self.spec.options.get("threads", 1))
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(
                model, sess_options=options, providers=["CPUExecutionProvider"]
            )
            self.context = int(config["n_positions"])
            self.layers = int(config["n_layer"])
            self.heads = int(config["n_head"])
            self.head_dim = int(config["n_embd"]) // self.heads
            eos = config.get("eos_token_id")
            self.eos = int(eos) if eos is not None else None
            self.eos_token = str(config.get("eos_token") or "")
        except Exception as exc:  # any broken artifact: ONNX Runtime raises its own error types
            # The reason reaches clients: the engine's words stay in the log.
            self.close()
            raise RuntimeUnavailable(
                f"unavailable: the artifact of {self.spec.label} is not an onnx-textgen zip "
                f"({type(exc).__name__})"
            ) from exc
        self._outputs = [o.name for o in self.session.get_outputs()]

    def warmup(self) -> None:
        list(self.stream({"prompt": "Hello", "max_tokens": 2, "temperature": 0}))

    def close(self) -> None:
        self.session = None
        self.tokenizer = None

    # --- checks and settings ------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text).ids
        return ids

    def check(self, item: Item) -> Item:
        """The context window's rules (:func:`inference.runtimes.text.fit_context`); an empty
        prompt starts from the end-of-text token."""
        return fit_context(
            item,
            tokens=len(self.encode(str(item.get("prompt", "")))),
            context=self.context,
            start_token=self.eos_token,
            default_new_tokens=self._settings(item)["max_new_tokens"],
        )

    def _settings(self, item: Item) -> dict[str, Any]:
        options = self.spec.options
        limit = int(options.get("max_tokens_limit", 1024))
        wanted = int(item.get("max_tokens") or options.get("max_new_tokens", 64))
        temperature = float(item.get("temperature", options.get("temperature", 0.0)) or 0.0)
        top_p = float(item.get("top_p", options.get("top_p", 1.0)) or 1.0)
        seed = item.get("seed", options.get("seed"))
        return {
            "max_new_tokens": max(1, min(wanted, limit)),
            "temperature": temperature,
            "top_p": top_p,
            "top_k": int(options.get("top_k", 0)),
            "seed": int(seed) if seed is not None else None,
        }

    # --- generation ---------------------------------------------------------------------------

    def predict(self, batch: list[Item]) -> list[Item]:
        # One row at a time: the model is tiny, and each row keeps its own KV cache.
        out = []
        for item in batch:
            *_, last = self.stream(item)
            out.append(last)
        return out

    def tokens(self, prompt: list[int], settings: dict[str, Any]) -> Iterator[int]:
        """Token ids, one model step each, until the limit (the caller stops at end of text)."""
        import numpy as np

        rng = np.random.default_rng(settings["seed"])
        empty = np.zeros((1, self.heads, 0, self.head_dim), dtype=np.float32)
        past = {}
        for n in range(self.layers):
            past[f"past_key_{n}"] = empty
            past[f"past_value_{n}"] = empty
        ids, start = prompt, 0
        for _ in range(settings["max_new_tokens"]):
            new = len(ids)
            total = start + new
            mask = np.triu(np.full((new, total), _MASKED, dtype=np.float32), start + 1)
            feed = {
                "input_ids": np.asarray([ids], dtype=np.int64),
                "positions": np.arange(start, total, dtype=np.int64)[None, :],
                "mask": mask,
                **past,
            }
            logits, *present = self.session.run(None, feed)
            for name, value in zip(self._outputs[1:], present, strict=True):
                past[name.replace("present_", "past_")] = value
            token = _choose(logits[0], settings, rng)
            yield token
            ids, start = [token], total

    def stream(self, item: Item) -> Iterator[Item]:
        """Token pieces as they are generated, then the whole answer."""
        settings = self._settings(item)
        limit = settings["max_new_tokens"]
        prompt = self.encode(str(item.get("prompt", "")))
        if not prompt and self.eos is not None:
            prompt = [self.eos]
        # A prompt too long for the context keeps its end, which the continuation follows
        # (``check`` has refused those with an explicit max_tokens already).
        prompt = prompt[-max(1, self.context - limit) :]
        limit = min(limit, self.context - len(prompt))
        settings = {**settings, "max_new_tokens": limit}
        pieces = Pieces(
            lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True), item.get("stop")
        )
        ended = False
        for token in self.tokens(prompt, settings):
            if token == self.eos:
                ended = True
                break
            piece = pieces.add(token)
            if piece:
                yield {"text": piece}
            if pieces.stopped:
                break
        done = ended or pieces.stopped or len(pieces.ids) < limit
        yield {
            "text": pieces.text,
            "finish_reason": "stop" if done else "length",
            "prompt_tokens": len(prompt),
            "completion_tokens": len(pieces.ids),
        }


def _choose(logits: Any, settings: dict[str, Any], rng: Any) -> int:
    """The next token: the most likely one (temperature 0), else sampled from the softmax at
    that temperature, among the ``top_k`` most likely and the smallest set whose probability
    reaches ``top_p``."""
    import numpy as np

    temperature = settings["temperature"]
    if temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    order = np.argsort(-scaled, kind="stable")
    if settings["top_k"] > 0:
        order = order[: settings["top_k"]]
    kept = scaled[order]
    probs = np.exp(kept - kept.max())
    probs /= probs.sum()
    top_p = settings["top_p"]
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), top_p)) + 1
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    return int(order[rng.choice(len(order), p=probs)])


def _read_config(artifact: IO[bytes] | None) -> dict[str, Any] | None:
    """``config.json`` of an onnx-textgen zip, or None when it cannot be read here (loading
    will say why)."""
    if artifact is None:
        return None
    try:
        artifact.seek(0)
        with zipfile.ZipFile(artifact) as archive:
            value = json.loads(archive.read("config.json"))
        return value if isinstance(value, dict) else None
    except (OSError, KeyError, zipfile.BadZipFile, ValueError):
        return None
    finally:
        artifact.seek(0)
