"""Tiny Hugging Face models built offline into a directory, for tests and benchmarks.

Random weights and a byte-level BPE tokenizer trained on a few sentences with the
``tokenizers`` library: enough to exercise loading, batching, streaming and cancellation of
the ``transformers`` runtime without downloading anything. Nothing here runs in production.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A stream of tokens flows from the worker to the client.",
    "Hello world, this is a tiny language model for tests.",
    "Cancel the stream and the worker stops within a token.",
]


def _tokenizer(*, specials: list[str], vocab_size: int) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 4, trainer)
    return tok


def build_gpt2(
    directory: Path,
    *,
    eos: bool = True,
    n_positions: int = 256,
    n_layer: int = 2,
    n_embd: int = 64,
    seed: int = 0,
) -> Path:
    """A 2-layer GPT-2 (a few hundred thousand parameters). ``eos=False``: no end-of-text
    token at all, so generation only ends at ``max_tokens`` (long, predictable streams).
    More layers make each token slower (a stream that outlasts a loaded machine's lag)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    specials = ["<|endoftext|>"] if eos else []
    raw = _tokenizer(specials=specials, vocab_size=320)
    kwargs = {"eos_token": "<|endoftext|>"} if eos else {}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, **kwargs)
    eos_id = tokenizer.eos_token_id if eos else None
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=2,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    model = GPT2LMHeadModel(config)
    if not eos:
        model.generation_config.eos_token_id = None
        model.generation_config.bos_token_id = None
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory)
    return directory


def build_t5(directory: Path, *, seed: int = 0) -> Path:
    """A 1-layer T5 encoder-decoder with a byte-level BPE tokenizer."""
    import torch
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    raw = _tokenizer(specials=["<pad>", "</s>", "<unk>"], vocab_size=320)
    specials = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, **specials)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    model = T5ForConditionalGeneration(config)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory)
    return directory


def zipped(directory: Path) -> bytes:
    """The directory as a zip artifact (what ``registermodel --artifact`` would upload)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(directory).as_posix())
    return buffer.getvalue()
