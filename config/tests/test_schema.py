from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import yaml
from django.contrib.admindocs.views import simplify_regex
from django.urls import URLPattern, URLResolver, get_resolver

pytestmark = pytest.mark.django_db

API = re.compile(r"^/v\d+/")


def _routes(patterns: list, prefix: str = "") -> Iterator[tuple[str, str | None]]:
    for p in patterns:
        if isinstance(p, URLResolver):
            yield from _routes(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            yield simplify_regex(prefix + str(p.pattern)), p.name


def api_routes() -> set[str]:
    """Every routed API path, in OpenAPI's ``{param}`` notation."""
    found = set()
    for path, name in _routes(get_resolver().url_patterns):
        if API.match(path) and name != "api-not-found":
            found.add(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", path))
    return found


def test_every_api_route_is_in_the_openapi_schema(client):
    response = client.get("/api/schema/")
    assert response.status_code == 200
    documented = set(yaml.safe_load(response.content)["paths"])
    routes = api_routes()
    assert routes, "no API routes found: the walk is broken"
    assert routes - documented == set()


def test_the_schema_documents_both_credentials(client):
    schemes = yaml.safe_load(client.get("/api/schema/").content)["components"]["securitySchemes"]
    assert schemes["ApiKeyAuth"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["BearerAuth"]["scheme"] == "bearer"


def test_swagger_and_redoc_pages_are_served(client):
    assert client.get("/api/docs/").status_code == 200
    assert client.get("/api/redoc/").status_code == 200
