"""Hugging Face ``transformers`` from a local directory: causal language models (GPT-2, Llama,
Qwen, …) with token streaming, and sequence-to-sequence models (T5, BART, …).

The model is what ``save_pretrained`` writes (``config.json``, weights, tokenizer files). It
comes from either

- the version's artifact: a zip or tar (optionally gzipped) of that directory, extracted into a
  private temporary directory on load and removed on close; or
- ``runtime_options.path``: a directory on the worker's disk (how a multi-gigabyte LLM plugs in
  without travelling through the artifact store).

Nothing is downloaded: loading is ``local_files_only`` with the hub switched offline.
``torch`` and ``transformers`` are imported inside this module's methods only.

Input items: ``{"prompt": str, "max_tokens"?, "temperature"?, "top_p"?, "stop"?: [str],
"messages"?: [{"role", "content"}]}`` (``messages`` is used through the tokenizer's chat
template when it has one, else ``prompt``). Output: ``{"text", "finish_reason": "stop" |
"length", "prompt_tokens", "completion_tokens"}``.

``stream(item)`` yields ``{"text": piece}`` as each token is generated, then the output above
as its last chunk. Generation runs on a helper thread and hands token ids over one by one; when
the caller stops iterating (a cancelled stream), a stopping criterion ends ``generate`` at the
next token.

runtime_options:
    path:           local model directory (instead of an artifact)
    task:           "causal-lm" | "seq2seq" (default: from the config's ``is_encoder_decoder``)
    max_new_tokens: default completion length (64); ``max_tokens_limit`` caps requests (1024)
    temperature:    default 0 (greedy); ``top_k`` (default 0: off), ``top_p`` (default 1)
    threads:        torch intra-op threads for the process (default: torch's own choice)
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import shutil
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, ClassVar

from inference.runtimes.base import (
    Item,
    Runtime,
    RuntimeUnavailable,
    missing_engine,
    torch_device,
)
from inference.runtimes.text import Pieces, bound_max_tokens, cut_at_stop, fit_context

log = logging.getLogger(__name__)

EXTRA_HINT = "install with pip install -r requirements-models-extra.txt"
_DONE = object()
# What the config of a model names its context window (positions), in the order looked at.
_CONTEXT_KEYS = ("n_positions", "max_position_embeddings")


class TransformersRuntime(Runtime):
    name = "transformers"
    engines: ClassVar[tuple[str, ...]] = ("torch", "transformers")

    model: Any = None
    tokenizer: Any = None
    seq2seq = False
    max_positions: int | None = None
    _tmp: str | None = None

    @classmethod
    def unavailable(cls, options: dict[str, Any]) -> str | None:
        missing = missing_engine(cls.engines, EXTRA_HINT)
        if missing:
            return missing
        task = options.get("task")
        if task not in (None, "causal-lm", "seq2seq"):
            return f"unavailable: runtime_options.task must be causal-lm or seq2seq, not {task!r}"
        return None

    @classmethod
    def on_register(
        cls, options: dict[str, Any], artifact: IO[bytes] | None, input_schema: dict[str, Any]
    ) -> dict[str, Any]:
        """A causal model's context window (from its ``config.json``, read without torch)
        bounds ``max_tokens`` (:func:`inference.runtimes.text.bound_max_tokens`)."""
        config = _read_config(artifact, options.get("path"))
        if config is None or _is_seq2seq(config, options):
            return input_schema
        context = _context_of(config)
        if context is None:
            return input_schema
        return bound_max_tokens(input_schema, context, options)

    # --- loading ------------------------------------------------------------------------------

    def load(self, artifact: bytes | None) -> None:
        reason = self.unavailable(self.spec.options)
        if reason:
            raise RuntimeUnavailable(reason)
        # The weights are local; never let the hub client reach for the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        if self.spec.options.get("threads"):
            torch.set_num_threads(int(self.spec.options["threads"]))
        directory = self._directory(artifact)
        config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
        task = self.spec.options.get("task") or (
            "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal-lm"
        )
        self.seq2seq = task == "seq2seq"
        auto = (
            transformers.AutoModelForSeq2SeqLM
            if self.seq2seq
            else transformers.AutoModelForCausalLM
        )
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                directory, local_files_only=True
            )
            self.model = auto.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError) as exc:
            # The reason reaches clients: the engine's words and the path stay in the log.
            log.warning("loading %s from %s failed: %s", self.spec.label, directory, exc)
            raise RuntimeUnavailable(
                f"unavailable: cannot load the model of {self.spec.label} ({type(exc).__name__})"
            ) from exc
        self.model.to(torch_device(self.spec.device, torch, self.spec.label))
        self.model.eval()
        if self.tokenizer.pad_token_id is None and self.tokenizer.eos_token_id is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not self.seq2seq:
            # Batches pad on the left, so every row continues right after its own prompt; a
            # prompt too long for the context keeps its end, which the continuation follows.
            self.tokenizer.padding_side = "left"
            self.tokenizer.truncation_side = "left"
        self.max_positions = None
        for attr in _CONTEXT_KEYS:
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                self.max_positions = value
                break

    def _directory(self, artifact: bytes | None) -> str:
        path = self.spec.options.get("path")
        if path:
            if not Path(path).is_dir():
                raise RuntimeUnavailable(f"unavailable: model directory {path} does not exist")
            return str(path)
        if not artifact:
            raise RuntimeUnavailable(
                f"unavailable: {self.spec.label} has neither an artifact nor runtime_options.path"
            )
        self._tmp = tempfile.mkdtemp(prefix="sluice-model-")
        try:
            _extract(artifact, Path(self._tmp))
        except (zipfile.BadZipFile, tarfile.TarError, ValueError) as exc:
            self.close()
            raise RuntimeUnavailable(
                f"unavailable: the artifact of {self.spec.label} is not a zip or tar of a model "
                f"directory ({exc})"
            ) from exc
        return str(_model_root(Path(self._tmp)))

    def warmup(self) -> None:
        list(self.stream({"prompt": "Hello", "max_tokens": 2}))

    def close(self) -> None:
        self.model = None
        self.tokenizer = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # --- generation ---------------------------------------------------------------------------

    def check(self, item: Item) -> Item:
        """A causal model's context window rules (:func:`inference.runtimes.text.fit_context`:
        the engine would fail past it); an empty prompt starts from the tokenizer's BOS (or EOS)
        token."""
        if self.seq2seq or self.max_positions is None:
            return item
        return fit_context(
            item,
            tokens=len(self.tokenizer(self._prompt(item))["input_ids"]),
            context=self.max_positions,
            start_token=self.tokenizer.bos_token or self.tokenizer.eos_token,
            default_new_tokens=self._settings(item)["max_new_tokens"],
        )

    def _settings(self, item: Item) -> dict[str, Any]:
        options = self.spec.options
        limit = int(options.get("max_tokens_limit", 1024))
        wanted = int(item.get("max_tokens") or options.get("max_new_tokens", 64))
        temperature = float(item.get("temperature", options.get("temperature", 0.0)) or 0.0)
        top_p = float(item.get("top_p", options.get("top_p", 1.0)) or 1.0)
        top_k = int(options.get("top_k", 0))
        kwargs: dict[str, Any] = {"max_new_tokens": max(1, min(wanted, limit))}
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def _prompt(self, item: Item) -> str:
        messages = item.get("messages")
        if messages and getattr(self.tokenizer, "chat_template", None):
            text: str = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            return text
        return str(item.get("prompt", ""))

    def _encode(self, prompts: list[str], new_tokens: int) -> Any:
        if self.seq2seq or self.max_positions is None:
            limit = self.max_positions
        else:
            limit = max(1, self.max_positions - new_tokens)
        encoded = self.tokenizer(
            prompts,
            return_tensors="pt",
            padding=len(prompts) > 1,
            truncation=limit is not None,
            max_length=limit,
        )
        return encoded.to(self.model.device)

    def _generate_kwargs(self, settings: dict[str, Any]) -> dict[str, Any]:
        pad = self.tokenizer.pad_token_id
        return {**settings, "pad_token_id": pad if pad is not None else 0}

    def predict(self, batch: list[Item]) -> list[Item]:
        import torch

        # Items asking for the same settings share one padded generate call.
        groups: dict[tuple[tuple[str, Any], ...], list[int]] = {}
        for index, item in enumerate(batch):
            key = tuple(sorted(self._settings(item).items()))
            groups.setdefault(key, []).append(index)
        out: list[Item] = [{} for _ in batch]
        for key, indexes in groups.items():
            settings = dict(key)
            prompts = [self._prompt(batch[i]) for i in indexes]
            encoded = self._encode(prompts, settings["max_new_tokens"])
            with torch.inference_mode():
                generated = self.model.generate(**encoded, **self._generate_kwargs(settings))
            prompt_len = 0 if self.seq2seq else encoded["input_ids"].shape[1]
            for row, i in enumerate(indexes):
                ids = [int(t) for t in generated[row][prompt_len:]]
                ids = [t for t in ids if t != self.tokenizer.pad_token_id or t in self._eos()]
                prompt_tokens = int(encoded["attention_mask"][row].sum())
                out[i] = self._finish(
                    ids, batch[i], settings["max_new_tokens"], prompt_tokens=prompt_tokens
                )
        return out

    def _eos(self) -> set[int]:
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return set()
        return {int(e) for e in eos} if isinstance(eos, list) else {int(eos)}

    def _finish(self, ids: list[int], item: Item, limit: int, *, prompt_tokens: int) -> Item:
        start = 1 if self.seq2seq and ids and ids[0] == self._decoder_start() else 0
        ids = ids[start:]
        eos = self._eos()
        ended = any(t in eos for t in ids)
        if ended:
            ids = ids[: next(n for n, t in enumerate(ids) if t in eos)]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, item.get("stop"))
        finish = "stop" if (ended or stopped or len(ids) < limit) else "length"
        return {
            "text": text,
            "finish_reason": finish,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(ids),
        }

    def _decoder_start(self) -> int | None:
        value = getattr(self.model.generation_config, "decoder_start_token_id", None)
        if value is None:
            value = getattr(self.model.config, "decoder_start_token_id", None)
        return int(value) if value is not None else None

    def stream(self, item: Item) -> Iterator[Item]:
        """Token pieces as they are generated, then the whole answer. Closing the generator
        (the consumer stopped: cancelled, disconnected) stops ``generate`` at the next token."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        settings = self._settings(item)
        encoded = self._encode([self._prompt(item)], settings["max_new_tokens"])
        tokens: queue.SimpleQueue[Any] = queue.SimpleQueue()
        stop = threading.Event()
        failure: list[BaseException] = []

        class Stopped(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

        streamer = _QueueStreamer(tokens)

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(
                        **encoded,
                        **self._generate_kwargs(settings),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([Stopped()]),
                    )
            except Exception as exc:  # noqa: BLE001 - handed to the consuming thread, raised there
                failure.append(exc)
            finally:
                tokens.put(_DONE)

        worker = threading.Thread(target=run, name=f"generate-{self.spec.label}", daemon=True)
        worker.start()
        eos = self._eos()
        decoder_start = self._decoder_start() if self.seq2seq else None
        pieces = Pieces(
            lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True), item.get("stop")
        )
        ended = False
        try:
            while True:
                token = tokens.get()
                if token is _DONE:
                    break
                if not pieces.ids and token == decoder_start:
                    continue
                if token in eos:
                    ended = True
                    continue
                piece = pieces.add(token)
                if piece:
                    yield {"text": piece}
                if pieces.stopped:
                    stop.set()
                    break
        finally:
            # Also on close(): generation ends at its next token, and we wait for that, so a
            # consumer that stops iterating knows the work has stopped when close() returns.
            stop.set()
            worker.join()
        if failure:
            raise failure[0]
        done = ended or pieces.stopped or len(pieces.ids) < settings["max_new_tokens"]
        yield {
            "text": pieces.text,
            "finish_reason": "stop" if done else "length",
            "prompt_tokens": int(encoded["attention_mask"][0].sum()),
            "completion_tokens": len(pieces.ids),
        }


class _QueueStreamer:
    """``generate``'s streamer hook: each new token id into a queue (the prompt, passed on
    the first call, is skipped)."""

    def __init__(self, out: queue.SimpleQueue[Any]) -> None:
        self.out = out
        self.first = True

    def put(self, value: Any) -> None:
        if self.first:
            self.first = False
            return
        for token in value.reshape(-1).tolist():
            self.out.put(int(token))

    def end(self) -> None:
        pass


def _extract(artifact: bytes, into: Path) -> None:
    """A zip or tar of a model directory; members may not leave ``into``."""
    if zipfile.is_zipfile(io.BytesIO(artifact)):
        with zipfile.ZipFile(io.BytesIO(artifact)) as archive:
            for name in archive.namelist():
                if not (into / name).resolve().is_relative_to(into.resolve()):
                    raise ValueError(f"member {name!r} escapes the archive")
            archive.extractall(into)  # noqa: S202 - members checked above
        return
    with tarfile.open(fileobj=io.BytesIO(artifact), mode="r:*") as archive:
        archive.extractall(into, filter="data")


def _read_config(artifact: IO[bytes] | None, path: Any) -> dict[str, Any] | None:
    """The model's ``config.json`` from an artifact (a zip or tar of the model directory; the
    top one, as :func:`_model_root` picks it) or a local ``path``; None when it cannot be read
    here (a ``path`` on the worker's disk only, a broken archive: loading will say so)."""
    try:
        if artifact is None:
            config = Path(str(path)) / "config.json" if path else None
            return _json_object(config.read_bytes()) if config and config.is_file() else None
        artifact.seek(0)
        if zipfile.is_zipfile(artifact):
            artifact.seek(0)
            with zipfile.ZipFile(artifact) as archive:
                names = [n for n in archive.namelist() if Path(n).name == "config.json"]
                if not names:
                    return None
                return _json_object(archive.read(min(names, key=lambda n: (n.count("/"), n))))
        artifact.seek(0)
        with tarfile.open(fileobj=artifact, mode="r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith("config.json")]
            members = [m for m in members if Path(m.name).name == "config.json"]
            if not members:
                return None
            chosen = min(members, key=lambda m: (m.name.count("/"), m.name))
            extracted = tar.extractfile(chosen)
            return _json_object(extracted.read()) if extracted is not None else None
    except (OSError, zipfile.BadZipFile, tarfile.TarError, ValueError):
        return None
    finally:
        if artifact is not None:
            artifact.seek(0)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    value = json.loads(raw)
    return value if isinstance(value, dict) else None


def _is_seq2seq(config: dict[str, Any], options: dict[str, Any]) -> bool:
    task = options.get("task")
    return task == "seq2seq" if task else bool(config.get("is_encoder_decoder"))


def _context_of(config: dict[str, Any]) -> int | None:
    for name in _CONTEXT_KEYS:
        value = config.get(name)
        if isinstance(value, int) and value > 1:
            return value
    return None


def _model_root(top: Path) -> Path:
    """The directory holding ``config.json``: the top, or the one folder the archive wraps."""
    if (top / "config.json").exists():
        return top
    found = sorted(p.parent for p in top.rglob("config.json"))
    if not found:
        raise RuntimeUnavailable("unavailable: the model archive has no config.json")
    return found[0]
