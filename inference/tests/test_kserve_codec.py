"""The one KServe v2 tensor codec that the /v2 API and the remote ``kserve`` runtime share."""

from __future__ import annotations

from typing import Any

import pytest

from inference.runtimes import kserve_codec


@pytest.mark.parametrize(
    ("rows", "datatype", "shape"),
    [
        ([3, 4, 5], "INT64", [3]),
        ([0.5, 1.5], "FP32", [2]),
        ([True, False], "BOOL", [2]),
        (["a", "b"], "BYTES", [2]),
        ([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], "FP32", [2, 3]),
        ([[[1, 2], [3, 4]], [[5, 6], [7, 8]]], "INT64", [2, 2, 2]),
    ],
)
def test_it_round_trips_rows_through_a_tensor(rows: list[Any], datatype: str, shape: list) -> None:
    tensor = kserve_codec.encode("y", rows)
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("y", datatype, shape)
    assert tensor["data"] == kserve_codec.flatten(rows)
    assert kserve_codec.decode(tensor, len(rows)) == rows


def test_a_row_of_one_value_decodes_as_a_scalar() -> None:
    tensor = kserve_codec.encode("label", [7, 8], row_shape=[1])
    assert tensor["shape"] == [2, 1]
    assert kserve_codec.decode(tensor, 2) == [7, 8]


def test_an_inferred_bytes_tensor_carries_text_unless_told_otherwise() -> None:
    assert kserve_codec.encode("x", [1, "a"])["data"] == ["1", "a"]
    assert kserve_codec.encode("x", [1, "a"], text=False)["data"] == [1, "a"]
    assert kserve_codec.encode("x", [1, 2], datatype="FP32")["datatype"] == "FP32"


@pytest.mark.parametrize(
    ("tensor", "count", "message"),
    [
        ({"name": "y", "data": [1]}, 1, "sent output 'y' without a shape"),
        ({"name": "y", "shape": [1], "data": [1]}, 2, "answered 1 rows of 'y' for 2 inputs"),
        ({"name": "y", "shape": [2, 2], "data": [1, 2, 3]}, 2, "sent 3 values for output 'y'"),
    ],
)
def test_it_names_what_is_wrong_with_a_tensor(tensor: dict, count: int, message: str) -> None:
    with pytest.raises(kserve_codec.CodecError, match=message):
        kserve_codec.decode(tensor, count)


def test_it_checks_values_against_a_datatype() -> None:
    assert kserve_codec.fits(1, "FP32") and kserve_codec.fits(1.5, "FP64")
    assert not kserve_codec.fits(True, "INT64") and not kserve_codec.fits(1.5, "INT32")
    assert kserve_codec.fits("a", "BYTES") and not kserve_codec.fits(1, "BYTES")
    assert kserve_codec.fits(False, "BOOL") and not kserve_codec.fits(0, "BOOL")
