"""KServe Open Inference Protocol v2 (JSON tensors) ↔ Sluice's one-input-per-request payloads.

A version's declared input schema gives each named property one tensor: ``number`` → FP32,
``integer`` → INT64, ``string`` → BYTES, ``boolean`` → BOOL, an array property a tensor of its
items' type shaped ``[maxItems]`` (``-1`` when the length is free). A request may add a leading
batch dimension; each row becomes one Sluice input (the worker's batcher merges them again).
"""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import APIException

SCHEMA_DATATYPES = {"number": "FP32", "integer": "INT64", "string": "BYTES", "boolean": "BOOL"}
_FLOATS = {"FP16", "FP32", "FP64", "BF16"}
_INTS = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
DATATYPES = _FLOATS | _INTS | {"BOOL", "BYTES"}
# What each declared type accepts on the wire (an integer tensor is fine for a float input).
_ACCEPTS = {
    "FP32": _FLOATS | _INTS,
    "INT64": _INTS,
    "BYTES": {"BYTES"},
    "BOOL": {"BOOL"},
}


class ProtocolError(APIException):
    """A v2 request that does not match the protocol or the model's tensors: 400, as the
    protocol expects."""

    status_code = 400
    default_code = "invalid_tensor"
    problem_slug = "invalid-tensor"


def tensor_specs(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """Input tensor metadata (``name``, ``datatype``, ``shape``) from a declared input schema."""
    specs = []
    for name, prop in (schema.get("properties") or {}).items():
        kind = prop.get("type")
        if kind == "array":
            items = prop.get("items") or {}
            fixed = prop.get("minItems") is not None and prop.get("minItems") == prop.get(
                "maxItems"
            )
            shape = [int(prop["maxItems"]) if fixed else -1]
            kind = items.get("type") if isinstance(items, dict) else None
        else:
            shape = [1]
        datatype = SCHEMA_DATATYPES.get(str(kind))
        if datatype is None:
            continue  # not expressible as a tensor: such a model is served through /v1 only
        specs.append({"name": name, "datatype": datatype, "shape": shape})
    return specs


def _check_value(value: Any, datatype: str) -> bool:
    if datatype == "BYTES":
        return isinstance(value, str)
    if datatype == "BOOL":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if datatype in _INTS:
        return isinstance(value, int)
    return isinstance(value, int | float)


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [leaf for item in data for leaf in _flatten(item)]
    return [data]


def decode_request(schema: dict[str, Any], body: Any) -> list[dict[str, Any]]:
    """The Sluice inputs (one per batch row) a v2 ``infer`` body carries; ProtocolError names
    the tensor that does not match the model's metadata."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list")
    specs = {spec["name"]: spec for spec in tensor_specs(schema)}
    rows: int | None = None
    columns: dict[str, list[Any]] = {}
    for tensor in body["inputs"]:
        if not isinstance(tensor, dict):
            raise ProtocolError("each input must be an object with name, shape, datatype, data")
        name = tensor.get("name")
        spec = specs.get(str(name))
        if spec is None:
            raise ProtocolError(f"unexpected input '{name}'; the model takes {sorted(specs)}")
        datatype = tensor.get("datatype")
        if datatype not in DATATYPES:
            raise ProtocolError(f"input '{name}': unknown datatype {datatype!r}")
        if datatype not in _ACCEPTS[spec["datatype"]]:
            raise ProtocolError(
                f"input '{name}': datatype {datatype} does not match the model's {spec['datatype']}"
            )
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ProtocolError(f"input '{name}': shape must be a list of non-negative integers")
        item = spec["shape"][0]
        if len(shape) == 1 and (item == -1 or shape == spec["shape"]) and item != 1:
            batch, width = 1, shape[0]
        elif len(shape) == 2 and (item == -1 or shape[1] == item):
            batch, width = shape
        elif len(shape) == 1 and item == 1:
            batch, width = shape[0], 1
        else:
            raise ProtocolError(
                f"input '{name}': shape {shape} does not match the model's {spec['shape']} "
                "(with an optional leading batch dimension)"
            )
        data = _flatten(tensor.get("data"))
        if len(data) != batch * width:
            raise ProtocolError(
                f"input '{name}': {len(data)} values do not fill shape {shape} "
                f"({batch * width} expected)"
            )
        if not all(_check_value(value, datatype) for value in data):
            raise ProtocolError(f"input '{name}': data does not match datatype {datatype}")
        if rows is not None and batch != rows:
            raise ProtocolError("all inputs must have the same batch size")
        rows = batch
        if item == 1:
            columns[spec["name"]] = data
        else:
            columns[spec["name"]] = [data[r * width : (r + 1) * width] for r in range(batch)]
    missing = set(schema.get("required") or []) - set(columns)
    if missing:
        raise ProtocolError(f"missing input(s): {sorted(missing)}")
    return [{name: column[r] for name, column in columns.items()} for r in range(rows or 0)]


def _datatype_of(values: list[Any]) -> str:
    if values and all(isinstance(v, bool) for v in values):
        return "BOOL"
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "INT64"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "FP32"
    return "BYTES"


def _shape_of(value: Any) -> list[int]:
    if isinstance(value, list):
        return [len(value), *(_shape_of(value[0]) if value else [])]
    return []


def encode_outputs(rows: list[dict[str, Any]], requested: list[str] | None) -> list[dict[str, Any]]:
    """Output tensors: each output field across the batch rows, shaped ``[rows, ...]``."""
    names = list(rows[0]) if rows else []
    if requested:
        unknown = [name for name in requested if name not in names]
        if unknown:
            raise ProtocolError(f"unknown output(s) {unknown}; the model gives {names}")
        names = requested
    outputs = []
    for name in names:
        column = [row[name] for row in rows]
        data = _flatten(column)
        datatype = _datatype_of(data)
        if datatype == "BYTES":
            data = [v if isinstance(v, str) else str(v) for v in data]
        outputs.append(
            {"name": name, "datatype": datatype, "shape": _shape_of(column), "data": data}
        )
    return outputs
