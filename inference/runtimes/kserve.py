"""Remote KServe Open Inference Protocol v2 (Triton, MLServer, KServe) over HTTP/JSON.

A batch from the worker's batcher is **one** v2 ``infer`` request: each input tensor stacks the
batch's items along a leading batch dimension, and each output tensor is split back into one
value per item. Common options (url, timeouts, retries, breaker, api_key_env) are in
:mod:`inference.runtimes.remote`; this module adds:

    model:   the remote model's name (default: the Sluice model's name)
    version: the remote model's version (default: none, the server's choice)
    inputs:  {"<remote input tensor>": {"field": "<input field>", "datatype": "FP32",
             "shape": [64]}}; ``shape`` is one item's (no batch dimension). Missing datatype or
             shape comes from the remote model's metadata; without ``inputs`` at all, the
             metadata's inputs are fed from the input fields of the same name, and a server
             that declares none gets each input field as a tensor of its own, typed by value.
    outputs: ["label", "probabilities"]: the output fields to return (default: every output
             the server sends); ``output_tensors`` maps a field to its remote tensor name
             ({"label": "predict"}), default the same name.
    parameters: request-level v2 parameters sent with every call (e.g. {"content_type": "np"}).

A row of shape ``[]`` or ``[1]`` becomes a scalar; other rows nested lists of their shape.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

from inference.runtimes import kserve_codec, remote
from inference.runtimes.base import (
    Item,
    Runtime,
    UpstreamError,
    UpstreamUnavailable,
    missing_engine,
)
from inference.runtimes.kserve_codec import DATATYPES
from inference.runtimes.remote import InvalidOptions, RemoteOptions, Upstream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorIn:
    tensor: str
    field: str
    datatype: str | None = None
    shape: tuple[int, ...] | None = None  # one item's shape; -1 = taken from the data


@dataclass(frozen=True)
class KServeOptions:
    remote: RemoteOptions
    model: str | None
    version: str | None
    inputs: tuple[TensorIn, ...]
    outputs: tuple[str, ...] | None
    output_tensors: dict[str, str]
    parameters: dict[str, Any] | None

    @classmethod
    def parse(cls, options: dict[str, Any]) -> KServeOptions:
        remote = RemoteOptions.parse(options)
        model, version = options.get("model"), options.get("version")
        for name, value in (("model", model), ("version", version)):
            if value is not None and (not isinstance(value, str | int) or str(value) == ""):
                raise InvalidOptions(f"{name} must be a non-empty string")
        inputs = []
        declared = options.get("inputs") or {}
        if not isinstance(declared, dict):
            raise InvalidOptions("inputs must be an object: {tensor: {field, datatype, shape}}")
        for tensor, conf in declared.items():
            conf = conf or {}
            if not isinstance(conf, dict):
                raise InvalidOptions(f"inputs.{tensor} must be an object")
            datatype = conf.get("datatype")
            if datatype is not None and datatype not in DATATYPES:
                raise InvalidOptions(f"inputs.{tensor}.datatype {datatype!r} is not a v2 type")
            shape = conf.get("shape")
            if shape is not None and (
                not isinstance(shape, list)
                or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
                or any(d < -1 for d in shape)
            ):
                raise InvalidOptions(f"inputs.{tensor}.shape must be a list of integers (-1: any)")
            field = conf.get("field", tensor)
            if not isinstance(field, str) or not field:
                raise InvalidOptions(f"inputs.{tensor}.field must be an input field name")
            inputs.append(
                TensorIn(
                    tensor=str(tensor),
                    field=field,
                    datatype=datatype,
                    shape=tuple(shape) if shape is not None else None,
                )
            )
        outputs = options.get("outputs")
        if outputs is not None and (
            not isinstance(outputs, list) or not all(isinstance(o, str) and o for o in outputs)
        ):
            raise InvalidOptions("outputs must be a list of output field names")
        tensors = options.get("output_tensors") or {}
        if not isinstance(tensors, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in tensors.items()
        ):
            raise InvalidOptions("output_tensors must map output fields to remote tensor names")
        parameters = options.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidOptions("parameters must be an object")
        return cls(
            remote=remote,
            model=str(model) if model is not None else None,
            version=str(version) if version is not None else None,
            inputs=tuple(inputs),
            outputs=tuple(outputs) if outputs is not None else None,
            output_tensors=dict(tensors),
            parameters=parameters,
        )


class KServeRuntime(Runtime):
    name = "kserve"
    engines: ClassVar[tuple[str, ...]] = ()

    upstream: Upstream | None = None
    options: KServeOptions
    _path: str
    _inputs: tuple[TensorIn, ...]

    @classmethod
    def unavailable(cls, options: dict[str, Any]) -> str | None:
        reason = missing_engine((*remote.ENGINES, *cls.engines), remote.REMOTE_HINT)
        if reason:
            return reason
        try:
            KServeOptions.parse(options)
        except InvalidOptions as exc:
            return f"unavailable: invalid runtime_options: {exc}"
        return None

    def load(self, artifact: bytes | None) -> None:
        reason = self.unavailable(self.spec.options)
        if reason:
            raise UpstreamUnavailable(reason)
        self.options = KServeOptions.parse(self.spec.options)
        model = self.options.model or self.spec.model
        self._path = f"/v2/models/{quote(model, safe='')}"
        if self.options.version:
            self._path += f"/versions/{quote(self.options.version, safe='')}"
        self.upstream = Upstream(self.options.remote, label=self.spec.label, model=self.spec.model)
        try:
            metadata = self.upstream.request("GET", self._path).json()
        except Exception:
            self.close()
            raise
        self._inputs = self._resolve_inputs(metadata if isinstance(metadata, dict) else {})

    def _resolve_inputs(self, metadata: dict[str, Any]) -> tuple[TensorIn, ...]:
        """Declared inputs, with datatype and shape completed from the remote metadata (whose
        first dimension is the batch's)."""
        known = {str(t.get("name")): t for t in metadata.get("inputs") or [] if isinstance(t, dict)}
        declared = self.options.inputs or tuple(TensorIn(tensor=n, field=n) for n in known)
        resolved = []
        for spec in declared:
            meta = known.get(spec.tensor, {})
            shape = spec.shape
            if shape is None and isinstance(meta.get("shape"), list) and len(meta["shape"]) > 1:
                shape = tuple(int(d) for d in meta["shape"][1:])
            resolved.append(
                TensorIn(
                    tensor=spec.tensor,
                    field=spec.field,
                    datatype=spec.datatype or meta.get("datatype"),
                    shape=shape,
                )
            )
        return tuple(resolved)

    def warmup(self) -> None:
        assert self.upstream is not None
        try:
            self.upstream.request("GET", f"{self._path}/ready")
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    # -- predict ---------------------------------------------------------------------------

    def predict(self, batch: list[Item]) -> list[Item]:
        if not batch:
            return []
        specs = self._inputs or tuple(TensorIn(tensor=f, field=f) for f in batch[0])
        tensors = [self._tensor(spec, batch) for spec in specs]
        if any(t is None for t in tensors):
            # Items whose shapes differ cannot share one tensor: one request each.
            return [self.predict([item])[0] for item in batch]
        body: dict[str, Any] = {"inputs": tensors}
        wanted = self.options.outputs
        if wanted is not None:
            body["outputs"] = [{"name": self.options.output_tensors.get(f, f)} for f in wanted]
        if self.options.parameters:
            body["parameters"] = self.options.parameters
        assert self.upstream is not None
        answer = self.upstream.request("POST", f"{self._path}/infer", body=body).json()
        return self._rows(answer, len(batch))

    def _tensor(self, spec: TensorIn, batch: list[Item]) -> dict[str, Any] | None:
        try:
            values = [item[spec.field] for item in batch]
        except KeyError as exc:
            raise UpstreamError(
                f"{self.spec.label}: input field {spec.field!r} (tensor {spec.tensor}) is "
                "missing; check runtime_options.inputs against the input schema"
            ) from exc
        shapes = {tuple(kserve_codec.shape_of(v)) for v in values}
        if len(shapes) > 1:
            if len(batch) == 1:
                raise UpstreamError(f"{self.spec.label}: ragged input {spec.field!r}")
            return None
        shape = list(next(iter(shapes)))
        if spec.shape == (1,) and not shape:
            shape = [1]  # a scalar field fed to a [1]-shaped tensor
        elif spec.shape is not None and (
            len(spec.shape) != len(shape)
            or any(want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True))
        ):
            raise UpstreamError(
                f"{self.spec.label}: input {spec.field!r} has shape {shape}, the tensor "
                f"{spec.tensor} takes {list(spec.shape)}"
            )
        return kserve_codec.encode(
            spec.tensor, values, row_shape=shape, datatype=spec.datatype, text=False
        )

    def _rows(self, answer: Any, count: int) -> list[Item]:
        outputs = answer.get("outputs") if isinstance(answer, dict) else None
        if not isinstance(outputs, list):
            raise UpstreamError(f"the upstream of {self.spec.label} sent no outputs list")
        by_tensor = {str(o.get("name")): o for o in outputs if isinstance(o, dict)}
        field_of = {tensor: field for field, tensor in self.options.output_tensors.items()}
        if self.options.outputs is not None:
            fields = list(self.options.outputs)
        else:
            fields = [field_of.get(name, name) for name in by_tensor]
        rows: list[Item] = [{} for _ in range(count)]
        for field in fields:
            tensor = self.options.output_tensors.get(field, field)
            output = by_tensor.get(tensor)
            if output is None:
                raise UpstreamError(
                    f"the upstream of {self.spec.label} sent no output {tensor!r} "
                    f"(it sent {sorted(by_tensor)})"
                )
            try:
                values = kserve_codec.decode(output, count)
            except kserve_codec.CodecError as exc:
                raise UpstreamError(f"the upstream of {self.spec.label} {exc}") from exc
            for row, value in zip(rows, values, strict=True):
                row[field] = value
        return rows
