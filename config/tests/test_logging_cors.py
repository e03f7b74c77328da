from __future__ import annotations

import json
import logging

import pytest
from django.conf import settings as django_settings
from pythonjsonlogger.json import JsonFormatter

pytestmark = pytest.mark.django_db


def test_each_request_logs_one_structured_line(api, caplog):
    caplog.set_level(logging.INFO, logger="sluice.access")
    response = api.get("/v1/tenant", HTTP_X_REQUEST_ID="req-123")
    assert response["X-Request-ID"] == "req-123"
    (record,) = [r for r in caplog.records if r.name == "sluice.access"]
    fmt = django_settings.LOGGING["formatters"]["json"]
    formatter = JsonFormatter(fmt["fmt"], rename_fields=fmt["rename_fields"])
    line = json.loads(formatter.format(record))
    assert line["request_id"] == "req-123"
    assert line["tenant"] == "acme"
    assert line["path"] == "/v1/tenant"
    assert line["status"] == 200
    assert line["method"] == "GET"
    assert line["duration_ms"] >= 0
    assert line["level"] == "INFO"


def test_it_replaces_an_unsafe_incoming_request_id(client):
    response = client.get("/healthz", HTTP_X_REQUEST_ID="bad id\nwith newline")
    assert response["X-Request-ID"] != "bad id\nwith newline"
    assert len(response["X-Request-ID"]) == 32


def test_cors_allows_only_configured_origins(client, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example.com"]
    preflight = client.options(
        "/v1/tenant",
        HTTP_ORIGIN="https://app.example.com",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="x-api-key",
    )
    assert preflight["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "x-api-key" in preflight["Access-Control-Allow-Headers"]
    other = client.options(
        "/v1/tenant",
        HTTP_ORIGIN="https://evil.example.com",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
    )
    assert "Access-Control-Allow-Origin" not in other
