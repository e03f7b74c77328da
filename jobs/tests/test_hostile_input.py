"""Hostile input to the jobs API never reaches a 5xx: values PostgreSQL cannot store (COPY into
``jsonb``), nesting past the parser's limit and integers past 64 bits are refused with the
documented problem, and nothing is written."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from jobs.models import Job, Task

pytestmark = pytest.mark.django_db


def upload(name: str, content: bytes) -> io.BytesIO:
    file = io.BytesIO(content)
    file.name = name
    return file


def assert_refused(response: Any, field: str, code: str | None = None) -> None:
    assert response.status_code == 422, response.content
    body = response.json()
    assert body["type"] == "urn:sluice:problem:validation-error"
    assert [e["field"] for e in body["errors"]] == [field], body["errors"]
    if code is not None:
        assert body["errors"][0]["code"] == code
    assert not Job.objects.exists() and not Task.objects.exists()


@pytest.mark.parametrize(
    ("text", "code"),
    [("a\x00b", "null_characters_not_allowed"), ("\ud800", "surrogate_characters_not_allowed")],
)
def test_it_refuses_unstorable_strings_in_inline_inputs(
    api: APIClient, doubler: Any, text: str, code: str
) -> None:
    as_value = json.dumps({"model": "doubler", "inputs": [{"x": 1}, {"x": 2, "t": text}]})
    assert_refused(
        api.post("/v1/jobs", as_value, content_type="application/json"), "inputs[1].t", code
    )
    as_key = json.dumps({"model": "doubler", "inputs": [{text: 1}]})
    response = api.post("/v1/jobs", as_key, content_type="application/json")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"].startswith("inputs[0].")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("in.jsonl", b'{"x": 1}\n{"x": 2, "t": "a\\u0000b"}\n'),
        ("in.jsonl", b'{"x": 1}\n{"x": 2, "t": "\\ud800"}\n'),
        ("in.jsonl", b'{"x": NaN}\n'),
        ("in.jsonl", b'{"x": 99999999999999999999}\n'),
        ("in.jsonl", b'{"x": ' + b"[" * 50_000 + b"}\n"),
        ("in.json", b'[{"x": 1}, {"t": "a\\u0000b"}]'),
        ("in.json", b"[" * 50_000),
        ("in.csv", b"x,t\n1,a\x00b\n"),
        ("in.csv", b'x,t\n1,"[1, ' + b"[" * 50_000 + b'"\n'),
        ("in.csv", b'x,t\n1,"' + b"y" * 200_000 + b'"\n'),  # past csv's field size limit
    ],
)
def test_it_refuses_what_an_uploaded_file_cannot_store(
    api: APIClient, doubler: Any, name: str, content: bytes
) -> None:
    response = api.post("/v1/jobs", {"model": "doubler", "file": upload(name, content)})
    assert_refused(response, "file")


def test_csv_cells_that_are_no_storable_number_stay_text(
    api: APIClient, doubler: Any, run_jobs: Any
) -> None:
    content = b"x,a,b,c,d\n1,nan,inf,1e999,99999999999999999999\n"
    response = run_jobs(
        lambda: api.post("/v1/jobs", {"model": "doubler", "file": upload("in.csv", content)})
    )
    assert response.status_code == 201, response.json()
    assert Task.objects.get().input == {
        "x": 1,
        "a": "nan",
        "b": "inf",
        "c": "1e999",
        "d": "99999999999999999999",
    }


def test_a_body_nested_50000_deep_is_a_malformed_request(api: APIClient, doubler: Any) -> None:
    body = b'{"model": "doubler", "inputs": ' + b"[" * 50_000 + b"}"
    response = api.post("/v1/jobs", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["type"] == "urn:sluice:problem:malformed-request"
    assert not Job.objects.exists()


def test_integers_past_64_bits_are_refused_where_they_would_reach_a_bigint(
    api: APIClient, doubler: Any
) -> None:
    body = b'{"job": "7c0e5b9e-4c4f-4a53-9a8f-3f2f3a1f9a11", "tasks": [99999999999999999999]}'
    response = api.post("/v1/dead-tasks/replay", body, content_type="application/json")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "tasks[0]"


def test_integers_of_a_form_are_bounded_by_their_field(api: APIClient, doubler: Any) -> None:
    form = {"job": "7c0e5b9e-4c4f-4a53-9a8f-3f2f3a1f9a11", "tasks": ["99999999999999999999"]}
    response = api.post("/v1/dead-tasks/replay", form)  # multipart: the parser sees text
    assert response.status_code == 422, response.content
    assert response.json()["errors"][0]["field"] == "tasks[0]"


def test_options_of_a_multipart_job_go_through_the_same_policy(
    api: APIClient, doubler: Any
) -> None:
    form = {
        "model": "doubler",
        "file": upload("in.jsonl", b'{"x": 1}\n'),
        "options": '{"chunk_size": 1e999}',
    }
    assert_refused(api.post("/v1/jobs", form), "options.chunk_size", "number_not_finite")


# --- query parameters ---------------------------------------------------------------------------


@pytest.fixture
def jobs(api: APIClient, doubler: Any, run_jobs: Any) -> list[str]:
    ids = []
    for n in range(3):
        body = {"model": "doubler", "inputs": [{"x": i} for i in range(n + 2)]}
        ids.append(run_jobs(lambda b=body: api.post("/v1/jobs", b, format="json")).json()["id"])
    return ids


def test_a_page_size_past_64_bits_is_clamped_not_a_500(api: APIClient, jobs: list[str]) -> None:
    huge = "99999999999999999999"
    listed = api.get(f"/v1/jobs?limit={huge}")
    assert listed.status_code == 200 and len(listed.json()["results"]) == 3
    keys = api.get(f"/v1/keys?limit={huge}")
    assert keys.status_code == 200 and len(keys.json()["results"]) == 1
    results = api.get(f"/v1/jobs/{jobs[2]}/results?limit={huge}")
    assert results.status_code == 200 and len(results.json()["results"]) == 4


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("offset=99999999999999999999", "offset"),
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("status=%00", "status"),
        ("status=sleeping", "status"),
    ],
)
def test_a_bad_query_parameter_of_the_job_list_is_a_422_naming_it(
    api: APIClient, jobs: list[str], query: str, field: str
) -> None:
    response = api.get(f"/v1/jobs?{query}")
    assert response.status_code == 422, response.content
    assert [e["field"] for e in response.json()["errors"]] == [field]


@pytest.mark.parametrize(
    "query",
    [
        "cursor=" + base64.b64encode(b"p=99999999999999999999").decode(),
        "cursor=" + base64.b64encode(b"p=one").decode(),
        "cursor=not-a-cursor",
        "status=%00",
    ],
)
def test_a_bad_query_parameter_of_the_results_is_a_422(
    api: APIClient, jobs: list[str], query: str
) -> None:
    response = api.get(f"/v1/jobs/{jobs[0]}/results?{query}")
    assert response.status_code == 422, response.content
    assert response.json()["errors"][0]["field"] == query.partition("=")[0]


def test_the_dead_task_filter_must_be_a_job_id(api: APIClient, jobs: list[str]) -> None:
    for bad in ("not-a-uuid", "%00"):
        response = api.get(f"/v1/dead-tasks?job={bad}")
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "job"
    assert api.get(f"/v1/dead-tasks?job={jobs[0]}").status_code == 200


def test_an_unstorable_idempotency_key_is_a_422(api: APIClient, doubler: Any) -> None:
    response = api.post(
        "/v1/jobs",
        {"model": "doubler", "inputs": [{"x": 1}]},
        format="json",
        HTTP_IDEMPOTENCY_KEY="a\x00b",
    )
    assert_refused(response, "Idempotency-Key")
