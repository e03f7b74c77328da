"""The KServe Open Inference Protocol v2 tensor codec: rows of values ↔ ``{name, datatype,
shape, data}`` tensors whose first dimension is the batch.

Both sides of Sluice speak v2 through this one module: the ``/v2`` API (``api/protocols/v2.py``)
decodes requests into rows and encodes outputs, the remote ``kserve`` runtime encodes its batch
into request tensors and decodes the answer. It is plain Python (no Django), so the worker can
import it; see docs/inference.md, "KServe Open Inference Protocol v2".
"""

from __future__ import annotations

import math
from typing import Any

FLOATS = frozenset({"FP16", "FP32", "FP64", "BF16"})
INTS = frozenset(f"{sign}INT{bits}" for sign in ("", "U") for bits in (8, 16, 32, 64))
DATATYPES = FLOATS | INTS | {"BOOL", "BYTES"}


class CodecError(ValueError):
    """A tensor that cannot be read as rows; the message reads after "the upstream of <model>"
    and each side wraps it in its own error."""


def flatten(value: Any) -> list[Any]:
    """The leaves of nested lists, row-major (a scalar is one leaf)."""
    if isinstance(value, list):
        return [leaf for item in value for leaf in flatten(item)]
    return [value]


def shape_of(value: Any) -> list[int]:
    """The shape of nested lists, read along the first element of each level (``[]`` for a
    scalar)."""
    if isinstance(value, list):
        return [len(value), *(shape_of(value[0]) if value else [])]
    return []


def datatype_of(values: list[Any]) -> str:
    """The v2 datatype that holds every value: BOOL, INT64, FP32, else BYTES."""
    if values and all(isinstance(v, bool) for v in values):
        return "BOOL"
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "INT64"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "FP32"
    return "BYTES"


def fits(value: Any, datatype: str) -> bool:
    """Whether one data value is of ``datatype`` (JSON booleans are not numbers)."""
    if datatype == "BYTES":
        return isinstance(value, str)
    if datatype == "BOOL":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if datatype in INTS:
        return isinstance(value, int)
    return isinstance(value, int | float)


def encode(
    name: str,
    rows: list[Any],
    *,
    row_shape: list[int] | None = None,
    datatype: str | None = None,
    text: bool = True,
) -> dict[str, Any]:
    """One tensor stacking ``rows`` along a leading batch dimension. ``row_shape`` defaults to
    the first row's; ``datatype`` to the narrowest that holds the data, and with ``text`` a
    BYTES tensor inferred that way carries each value as a string."""
    if row_shape is None:
        row_shape = shape_of(rows[0]) if rows else []
    data = flatten(rows)
    if datatype is None:
        datatype = datatype_of(data)
        if text and datatype == "BYTES":
            data = [v if isinstance(v, str) else str(v) for v in data]
    return {"name": name, "datatype": datatype, "shape": [len(rows), *row_shape], "data": data}


def nest(flat: list[Any], shape: list[int]) -> Any:
    """Flat data back into nested lists of ``shape`` (a scalar for ``[]``)."""
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return flat
    step = math.prod(shape[1:])
    return [nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def decode(tensor: dict[str, Any], count: int) -> list[Any]:
    """One value per batch row from a tensor shaped ``[count, ...]``: a row of shape ``[]`` or
    ``[1]`` becomes a scalar, other rows nested lists of their shape."""
    shape = tensor.get("shape")
    data = flatten(tensor.get("data", []))
    name = tensor.get("name")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) for d in shape):
        raise CodecError(f"sent output {name!r} without a shape")
    if shape[0] != count:
        raise CodecError(f"answered {shape[0]} rows of {name!r} for {count} inputs")
    row_shape = shape[1:]
    size = math.prod(row_shape)
    if len(data) != count * size:
        raise CodecError(f"sent {len(data)} values for output {name!r} of shape {shape}")
    rows = [data[i * size : (i + 1) * size] for i in range(count)]
    if row_shape in ([], [1]):
        return [row[0] for row in rows]
    return [nest(row, row_shape) for row in rows]
