"""Protocol translation (KServe v2, OpenAI) in process: shapes, datatypes and error bodies."""

from __future__ import annotations

import base64
import struct

import pytest
from sklearn.datasets import load_digits

from inference.api.protocols import v2
from inference.registry.builtin import DIGITS_SCHEMA, TEXT_SCHEMA, sentiment_install

pytestmark = pytest.mark.django_db


def _pixels(rows: int = 1) -> list[list[float]]:
    return load_digits().data[:rows].tolist()


def _tensor(data, shape, datatype="FP32", name="pixels") -> dict:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


def test_it_derives_tensor_metadata_from_the_input_schema() -> None:
    assert v2.tensor_specs(DIGITS_SCHEMA) == [{"name": "pixels", "datatype": "FP32", "shape": [64]}]
    assert v2.tensor_specs(TEXT_SCHEMA) == [{"name": "text", "datatype": "BYTES", "shape": [1]}]


def test_it_splits_a_batch_into_one_input_per_row() -> None:
    rows = v2.decode_request(DIGITS_SCHEMA, _tensor(_pixels(3), [3, 64]))
    assert [r["pixels"] for r in rows] == _pixels(3)
    assert v2.decode_request(TEXT_SCHEMA, _tensor(["a", "b"], [2], "BYTES", "text")) == [
        {"text": "a"},
        {"text": "b"},
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_tensor([0] * 64, [64], "FP128"), "unknown datatype 'FP128'"),
        (_tensor(["a"] * 64, [64], "BYTES"), "datatype BYTES does not match the model's FP32"),
        (_tensor([0] * 64, [8, 8]), "shape [8, 8] does not match the model's [64]"),
        (_tensor([0] * 63, [64]), "63 values do not fill shape [64]"),
        (_tensor([0] * 64, [64], name="image"), "unexpected input 'image'"),
        (_tensor([True] * 64, [64], "INT64"), "data does not match datatype INT64"),
        ({"inputs": []}, "missing input(s): ['pixels']"),
        ({"nope": 1}, "'inputs' list"),
    ],
)
def test_it_rejects_a_bad_tensor_naming_what_is_wrong(body, message) -> None:
    with pytest.raises(v2.ProtocolError) as exc:
        v2.decode_request(DIGITS_SCHEMA, body)
    assert message in str(exc.value.detail)


def test_it_encodes_outputs_as_tensors_and_filters_them() -> None:
    rows = [{"label": 3, "p": [0.5, 0.5]}, {"label": 4, "p": [0.25, 0.75]}]
    label, p = v2.encode_outputs(rows, None)
    assert label == {"name": "label", "datatype": "INT64", "shape": [2], "data": [3, 4]}
    assert p == {"name": "p", "datatype": "FP32", "shape": [2, 2], "data": [0.5, 0.5, 0.25, 0.75]}
    assert [o["name"] for o in v2.encode_outputs(rows, ["p"])] == ["p"]
    with pytest.raises(v2.ProtocolError, match="unknown output"):
        v2.encode_outputs(rows, ["q"])


def test_it_infers_over_v2_in_process(api, digits, eager) -> None:
    data = load_digits()
    # One row: rows of a batch run on threads, which the in-memory test database cannot share
    # (the end-to-end test sends batches).
    response = api.post(
        "/v2/models/digits/infer", {"id": "r1", **_tensor(_pixels(1), [1, 64])}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model_name"] == "digits" and body["model_version"] == "1" and body["id"] == "r1"
    label = next(o for o in body["outputs"] if o["name"] == "label")
    assert label["data"] == data.target[:1].tolist() and label["shape"] == [1]
    pinned = api.post(
        "/v2/models/digits/versions/1/infer", _tensor(_pixels(1), [1, 64]), format="json"
    )
    assert pinned.status_code == 200, pinned.content


def test_it_answers_v2_errors_as_problems_with_an_error_member(api, digits, client) -> None:
    bad = api.post("/v2/models/digits/infer", _tensor([0] * 64, [64], "FP128"), format="json")
    assert bad.status_code == 400 and bad["Content-Type"] == "application/problem+json"
    assert "unknown datatype" in bad.json()["error"]
    missing = api.get("/v2/models/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "Unknown model 'nope'."
    assert client.get("/v2/models/digits").status_code == 401
    assert "error" in client.get("/v2/models/digits").json()
    out_of_range = [99.0] * 64
    invalid = api.post("/v2/models/digits/infer", _tensor(out_of_range, [64]), format="json")
    assert invalid.status_code == 422 and "input.pixels" in invalid.json()["error"]


def test_it_serves_v2_health_and_metadata(api, digits, client) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert api.get("/v2").json()["name"] == "sluice"
    meta = api.get("/v2/models/digits").json()
    assert meta["versions"] == ["1"] and meta["platform"] == "sluice_onnx"
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [64]}]
    assert api.get("/v2/models/digits/ready").json() == {"name": "digits", "ready": True}


def test_it_answers_openai_errors_with_the_openai_error_member(api, digits) -> None:
    sentiment_install(actor="test")
    missing = api.post("/v1/chat/completions", {"model": "gpt-x", "messages": []}, format="json")
    assert missing.status_code == 404
    assert missing["Content-Type"] == "application/problem+json"
    assert "does not exist" in missing.json()["error"]["message"]
    wrong = api.post("/v1/completions", {"model": "sentiment", "prompt": "hi"}, format="json")
    assert wrong.status_code == 422
    assert wrong.json()["error"]["type"] == "invalid_request_error"
    assert "not a text-generation model" in wrong.json()["error"]["message"]
    stream = api.post(
        "/v1/completions", {"model": "sentiment", "prompt": "hi", "stream": True}, format="json"
    )
    assert stream.status_code == 422
    assert "not a text-generation model" in stream.json()["error"]["message"]
    embed = api.post("/v1/embeddings", {"model": "digits", "input": "hi"}, format="json")
    assert embed.status_code == 422 and "not an embedding model" in embed.json()["error"]["message"]
    empty = api.post("/v1/embeddings", {"model": "digits", "input": []}, format="json")
    assert empty.status_code == 422 and "input" in empty.json()["error"]["message"]


def test_it_packs_base64_embeddings_as_little_endian_float32() -> None:
    packed = base64.b64encode(struct.pack("<2f", 0.5, -1.0)).decode()
    assert struct.unpack("<2f", base64.b64decode(packed)) == (0.5, -1.0)
