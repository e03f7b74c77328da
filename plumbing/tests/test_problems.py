from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

PROBLEM = "application/problem+json"


def _assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert {"type", "title", "status"} <= body.keys()
    return body


def test_it_answers_404_on_unknown_api_paths_as_a_problem(client, settings):
    settings.DEBUG = True  # even where Django would show its HTML technical page
    body = _assert_problem(client.get("/v1/no-such-thing"), 404)
    assert body["instance"] == "/v1/no-such-thing"


def test_it_answers_405_as_a_problem(api):
    body = _assert_problem(api.put("/v1/tenant", {}, format="json"), 405)
    assert body["type"] == "urn:sluice:problem:method-not-allowed"


def test_it_answers_413_before_reading_a_too_large_body(api, settings):
    settings.API_MAX_BODY_BYTES = 1000
    body = _assert_problem(
        api.post("/v1/keys", {"name": "x" * 2000, "scopes": ["infer"]}, format="json"), 413
    )
    assert body["type"] == "urn:sluice:problem:payload-too-large"


def test_it_answers_400_for_malformed_json(api):
    response = api.post("/v1/keys", data="{not json", content_type="application/json")
    body = _assert_problem(response, 400)
    assert body["type"] == "urn:sluice:problem:malformed-request"


def test_it_answers_422_listing_each_bad_field(api):
    body = _assert_problem(
        api.post("/v1/keys", {"name": "", "scopes": [], "requests_per_minute": -1}, format="json"),
        422,
    )
    assert body["type"] == "urn:sluice:problem:validation-error"
    assert {e["field"] for e in body["errors"]} == {"name", "scopes", "requests_per_minute"}
    assert all(e["detail"] and e["code"] for e in body["errors"])


@pytest.mark.urls("config.tests.error_urls")
def test_it_answers_500_as_a_problem_without_leaking_details():
    client = Client(raise_request_exception=False)
    body = _assert_problem(client.get("/v1/crash"), 500)
    assert "boom" not in str(body)


@pytest.mark.urls("config.tests.error_urls")
def test_non_api_paths_keep_html_errors():
    client = Client(raise_request_exception=False)
    response = client.get("/html/crash")
    assert response.status_code == 500
    assert response["Content-Type"].startswith("text/html")
    assert client.get("/no-such-page")["Content-Type"].startswith("text/html")


@pytest.mark.urls("config.tests.error_urls")
def test_a_view_that_finds_the_database_down_answers_503_with_retry_after(settings):
    settings.DATABASE_RETRY_AFTER_SECONDS = 7
    client = Client(raise_request_exception=False)
    response = client.get("/v1/database-down")
    body = _assert_problem(response, 503)
    assert body["type"] == "urn:sluice:problem:unavailable"
    assert "Connection refused" not in str(body)
    assert response["Retry-After"] == "7"
    page = client.get("/html/database-down")
    assert page.status_code == 503
    assert page["Retry-After"] == "7"


def test_the_last_resort_handler_answers_503_for_a_database_error(rf):
    from django.db import InterfaceError

    from plumbing.problems import handler500

    try:
        raise InterfaceError("connection already closed")
    except InterfaceError:
        response = handler500(rf.get("/v1/jobs"))
    assert response.status_code == 503
    assert response["Retry-After"]
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        assert handler500(rf.get("/v1/jobs")).status_code == 500
