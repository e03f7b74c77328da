"""The built-in ``textgen`` model: a tiny GPT-2 trained here, offline, on a public-domain text
that ships in this repository (``inference/data/genesis-kjv.txt``, the Book of Genesis, King
James Version), with a byte-level BPE tokenizer trained on the same text.

It is a demonstration of the text path (token streaming, cancellation, the OpenAI-compatible
endpoints), not a useful language model: about 0.8 M parameters and a minute of CPU training
give fluent-looking King James English with no sense. Real LLMs plug in through the
``transformers`` runtime with a local model directory, or an OpenAI-compatible upstream.

The build is deterministic for a given torch build and thread count (fixed seeds, fixed step
count) and cached under ``var/cache`` by a hash of everything that goes into it, so ``manage.py
demo`` trains once per machine, not once per call.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

log = logging.getLogger(__name__)

TEXT = Path(__file__).resolve().parents[1] / "data" / "genesis-kjv.txt"
EOS = "<|endoftext|>"


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights (its hash names the cached build)."""

    vocab_size: int = 1024
    n_positions: int = 256
    n_embd: int = 96
    n_layer: int = 2
    n_head: int = 4
    block: int = 64
    batch: int = 16
    steps: int = 300
    learning_rate: float = 3e-3
    seed: int = 1611
    threads: int = 2

    def digest(self) -> str:
        import torch
        import transformers

        h = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        h.update(TEXT.read_bytes())
        h.update(f"{torch.__version__}/{transformers.__version__}".encode())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class Built:
    archive: bytes  # a zip of the save_pretrained directory (the version's artifact)
    loss: float  # mean training loss over the last 50 steps
    parameters: int
    seconds: float
    cached: bool


def corpus() -> list[str]:
    """The training text: one chapter per paragraph, the header comment dropped."""
    lines = [ln for ln in TEXT.read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]
    return [p.strip() for p in "\n".join(lines).split("\n\n") if p.strip()]


def _train(recipe: Recipe, into: Path) -> tuple[float, int]:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(recipe.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        chapters = corpus()
        raw = Tokenizer(models.BPE())
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        raw.decoder = decoders.ByteLevel()
        raw.train_from_iterator(
            chapters,
            trainers.BpeTrainer(
                vocab_size=recipe.vocab_size,
                special_tokens=[EOS],
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                show_progress=False,
            ),
        )
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=EOS)
        eos = tokenizer.eos_token_id
        ids: list[int] = []
        for chapter in chapters:
            ids += [*raw.encode(chapter).ids, eos]
        data = torch.tensor(ids, dtype=torch.long)
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=recipe.n_positions,
            n_embd=recipe.n_embd,
            n_layer=recipe.n_layer,
            n_head=recipe.n_head,
            bos_token_id=eos,
            eos_token_id=eos,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        model = GPT2LMHeadModel(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.learning_rate, total_steps=recipe.steps, pct_start=0.1
        )
        generator = torch.Generator().manual_seed(recipe.seed)
        losses: list[float] = []
        model.train()
        for _ in range(recipe.steps):
            starts = torch.randint(
                0, len(data) - recipe.block - 1, (recipe.batch,), generator=generator
            )
            x = torch.stack([data[s : s + recipe.block] for s in starts.tolist()])
            loss = model(input_ids=x, labels=x).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        model.eval()
        model.generation_config.eos_token_id = eos
        model.generation_config.pad_token_id = eos
        into.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(into)
        model.save_pretrained(into)
        tail = losses[-50:]
        return sum(tail) / len(tail), sum(p.numel() for p in model.parameters())
    finally:
        torch.set_num_threads(threads)


def _zip(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                # A fixed timestamp: the same files give the same archive and checksum.
                info = zipfile.ZipInfo(
                    path.relative_to(directory).as_posix(), (2020, 1, 1, 0, 0, 0)
                )
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def cache_dir() -> Path:
    return Path(settings.BASE_DIR) / "var" / "cache"


def textgen_build(recipe: Recipe | None = None, *, use_cache: bool = True) -> Built:
    """Train (or take from the cache) and return the zipped model directory."""
    import tempfile

    recipe = recipe or Recipe()
    cached = cache_dir() / f"textgen-{recipe.digest()}.zip"
    meta = cached.with_suffix(".json")
    if use_cache and cached.exists() and meta.exists():
        known = json.loads(meta.read_text())
        return Built(cached.read_bytes(), known["loss"], known["parameters"], 0.0, cached=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sluice-textgen-") as tmp:
        loss, parameters = _train(recipe, Path(tmp) / "model")
        archive = _zip(Path(tmp) / "model")
    seconds = time.perf_counter() - started
    log.info("trained textgen in %.0f s: %d parameters, loss %.2f", seconds, parameters, loss)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(archive)
    info: dict[str, Any] = {"loss": loss, "parameters": parameters, "seconds": seconds}
    meta.write_text(json.dumps(info))
    return Built(archive, loss, parameters, seconds, cached=False)
