"""The built-in ``textgen`` model: a tiny GPT-2 trained offline on a public-domain text that
ships in this repository (``inference/data/genesis-kjv.txt``, the Book of Genesis, King James
Version), with a byte-level BPE tokenizer trained on the same text, exported to ONNX.

It is a demonstration of the text path (token streaming, cancellation, the OpenAI-compatible
endpoints), not a useful language model: about 0.35 M parameters and a minute of CPU training
give fluent-looking King James English with no sense. Real LLMs plug in through the
``transformers`` runtime with a local model directory, or an OpenAI-compatible upstream.

What serves is :data:`ARTIFACT`, kept in the repository (about 1.5 MB): a zip of ``model.onnx``
(the network with a KV cache, written here with ``onnx.helper`` from the trained weights),
``tokenizer.json`` (the ``tokenizers`` library's file) and ``config.json``. It runs on the
``onnx-textgen`` runtime (ONNX Runtime + ``tokenizers``), so serving needs no torch and nothing
is trained at start. ``manage.py buildtextgen --write`` rebuilds it (torch and transformers,
the dev install): the training is deterministic for a given torch build and thread count (fixed
seeds, fixed step count) and cached under ``var/cache`` by a hash of everything that goes into
it; ``inference/tests/test_textgen.py`` rebuilds it and checks the rebuilt model chooses the
same greedy tokens as the committed one.
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
ARTIFACT = Path(__file__).resolve().parents[1] / "data" / "textgen.zip"
ONNX_OPSET = 17
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


# --- the ONNX export (no torch: the weights come from the trained model's safetensors) ---------


def export(archive: bytes) -> bytes:
    """The served artifact, from :func:`textgen_build`'s zip of the trained GPT-2: a zip of
    ``model.onnx``, ``tokenizer.json`` and ``config.json``, the same bytes for the same input."""
    from safetensors.numpy import load as load_safetensors

    with zipfile.ZipFile(io.BytesIO(archive)) as source:
        hf_config = json.loads(source.read("config.json"))
        weights = load_safetensors(source.read("model.safetensors"))
        tokenizer = source.read("tokenizer.json")
    eos = int(hf_config["eos_token_id"])
    config = {
        "model_type": "gpt2",
        "n_positions": int(hf_config["n_positions"]),
        "n_layer": int(hf_config["n_layer"]),
        "n_head": int(hf_config["n_head"]),
        "n_embd": int(hf_config["n_embd"]),
        "vocab_size": int(hf_config["vocab_size"]),
        "eos_token_id": eos,
        "eos_token": EOS,
    }
    model = _onnx_graph(weights, config, float(hf_config.get("layer_norm_epsilon", 1e-5)))
    files = {
        "config.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
        "model.onnx": model,
        "tokenizer.json": tokenizer,
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            out.writestr(info, data)
    return buffer.getvalue()


def _onnx_graph(weights: dict[str, Any], config: dict[str, Any], epsilon: float) -> bytes:
    """GPT-2 as an ONNX graph with a KV cache, batch of one or more rows, no padding.

    Inputs: ``input_ids`` and ``positions`` (int64, [B, S]), ``mask`` (float32, [S, P + S]:
    0 where a new token may look, a large negative number elsewhere) and per layer ``past_key_L``
    / ``past_value_L`` ([B, heads, P, head_dim], P = 0 on the first call). Outputs: ``logits`` of
    the last position ([B, vocab]) and ``present_key_L`` / ``present_value_L`` ([B, heads,
    P + S, head_dim]), the next call's past."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    layers, heads, width = config["n_layer"], config["n_head"], config["n_embd"]
    head_dim = width // heads
    initializers: list[Any] = []
    nodes: list[Any] = []

    def const(name: str, value: Any) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(key: str) -> str:
        return const(key, np.ascontiguousarray(weights[key], dtype=np.float32))

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def linear(x: str, prefix: str, out: str) -> str:
        product = node("MatMul", [x, weight(f"{prefix}.weight")], f"{out}_mm")
        return node("Add", [product, weight(f"{prefix}.bias")], out)

    def norm(x: str, prefix: str, out: str) -> str:
        scale, bias = weight(f"{prefix}.weight"), weight(f"{prefix}.bias")
        return node("LayerNormalization", [x, scale, bias], out, axis=-1, epsilon=epsilon)

    const("split3", np.array([width] * 3, dtype=np.int64))
    const("heads_shape", np.array([0, 0, heads, head_dim], dtype=np.int64))
    const("merge_shape", np.array([0, 0, width], dtype=np.int64))
    const("scale", np.array(1.0 / np.sqrt(head_dim), dtype=np.float32))
    const("half", np.array(0.5, dtype=np.float32))
    const("one", np.array(1.0, dtype=np.float32))
    const("gelu_c", np.array(np.sqrt(2.0 / np.pi), dtype=np.float32))
    const("gelu_k", np.array(0.044715, dtype=np.float32))
    const("last", np.array(-1, dtype=np.int64))

    tokens = node("Gather", [weight("transformer.wte.weight"), "input_ids"], "tok_emb")
    places = node("Gather", [weight("transformer.wpe.weight"), "positions"], "pos_emb")
    x = node("Add", [tokens, places], "h0")
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("positions", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["seq", "total"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "vocab"])]
    for n in range(layers):
        p = f"transformer.h.{n}"
        for kind in ("key", "value"):
            shape = ["batch", heads, "past", head_dim]
            inputs.append(
                helper.make_tensor_value_info(f"past_{kind}_{n}", TensorProto.FLOAT, shape)
            )
            shape = ["batch", heads, "total", head_dim]
            outputs.append(
                helper.make_tensor_value_info(f"present_{kind}_{n}", TensorProto.FLOAT, shape)
            )
        h = norm(x, f"{p}.ln_1", f"l{n}_ln1")
        qkv = linear(h, f"{p}.attn.c_attn", f"l{n}_qkv")
        nodes.append(
            helper.make_node("Split", [qkv, "split3"], [f"l{n}_q", f"l{n}_k", f"l{n}_v"], axis=2)
        )
        split = {}
        for part in ("q", "k", "v"):
            shaped = node("Reshape", [f"l{n}_{part}", "heads_shape"], f"l{n}_{part}_4d")
            split[part] = node("Transpose", [shaped], f"l{n}_{part}_t", perm=[0, 2, 1, 3])
        key = node("Concat", [f"past_key_{n}", split["k"]], f"present_key_{n}", axis=2)
        value = node("Concat", [f"past_value_{n}", split["v"]], f"present_value_{n}", axis=2)
        key_t = node("Transpose", [key], f"l{n}_kT", perm=[0, 1, 3, 2])
        scores = node("MatMul", [split["q"], key_t], f"l{n}_scores")
        scores = node("Mul", [scores, "scale"], f"l{n}_scaled")
        scores = node("Add", [scores, "mask"], f"l{n}_masked")
        probs = node("Softmax", [scores], f"l{n}_probs", axis=-1)
        attended = node("MatMul", [probs, value], f"l{n}_att")
        attended = node("Transpose", [attended], f"l{n}_att_t", perm=[0, 2, 1, 3])
        attended = node("Reshape", [attended, "merge_shape"], f"l{n}_att_3d")
        attended = linear(attended, f"{p}.attn.c_proj", f"l{n}_att_out")
        x = node("Add", [x, attended], f"l{n}_res1")
        h = norm(x, f"{p}.ln_2", f"l{n}_ln2")
        f = linear(h, f"{p}.mlp.c_fc", f"l{n}_fc")
        # gelu_new (GPT-2's tanh approximation): 0.5 f (1 + tanh(sqrt(2/pi) (f + 0.044715 f^3)))
        cube = node("Mul", [node("Mul", [f, f], f"l{n}_f2"), f], f"l{n}_f3")
        inner = node("Add", [f, node("Mul", [cube, "gelu_k"], f"l{n}_kf3")], f"l{n}_in")
        inner = node("Tanh", [node("Mul", [inner, "gelu_c"], f"l{n}_cin")], f"l{n}_tanh")
        gate = node("Mul", [node("Add", [inner, "one"], f"l{n}_1p"), "half"], f"l{n}_gate")
        f = node("Mul", [f, gate], f"l{n}_gelu")
        f = linear(f, f"{p}.mlp.c_proj", f"l{n}_mlp_out")
        x = node("Add", [x, f], f"l{n}_res2")
    x = norm(x, "transformer.ln_f", "ln_f")
    x = node("Gather", [x, "last"], "last_hidden", axis=1)
    node("Gemm", [x, "transformer.wte.weight"], "logits", transB=1)  # tied embeddings
    graph = helper.make_graph(nodes, "sluice_textgen", inputs, outputs, initializer=initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="sluice-textgen"
    )
    model.ir_version = 8  # readable by every onnxruntime that supports opset 17
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def artifact_build(recipe: Recipe | None = None, *, use_cache: bool = True) -> bytes:
    """Train (or take the training from the cache) and export: the bytes of :data:`ARTIFACT`."""
    return export(textgen_build(recipe, use_cache=use_cache).archive)


# The prompts the rebuild check compares the greedy continuations of.
CHECK_PROMPTS = ("In the beginning", "And God said", "And the LORD", "")


def greedy_tokens(
    artifact: bytes, prompts: tuple[str, ...] = CHECK_PROMPTS, n: int = 24
) -> list[list[int]]:
    """The first ``n`` greedy token ids after each prompt, as the ``onnx-textgen`` runtime
    generates them from ``artifact``: what a rebuilt artifact must reproduce."""
    from inference.runtimes.base import VersionSpec
    from inference.runtimes.onnx_textgen import OnnxTextgenRuntime

    runtime = OnnxTextgenRuntime(
        VersionSpec(id=0, model="textgen", version="check", runtime="onnx-textgen")
    )
    runtime.load(artifact)
    try:
        out = []
        for prompt in prompts:
            ids = runtime.encode(prompt) or [runtime.eos or 0]
            settings = {
                "max_new_tokens": n,
                "temperature": 0.0,
                "top_p": 1.0,
                "top_k": 0,
                "seed": 0,
            }
            out.append(list(runtime.tokens(ids, settings)))
        return out
    finally:
        runtime.close()
