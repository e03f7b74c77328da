"""A URLconf with views that crash, to test the 500 answer on API paths and the 503 of a
database that does not answer."""

from __future__ import annotations

from django.db import OperationalError
from django.http import HttpRequest, HttpResponse
from django.urls import include, path


def crash(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom: internal detail that must not leak")


def database_down(request: HttpRequest) -> HttpResponse:
    raise OperationalError('connection to server at "db" failed: Connection refused')


urlpatterns = [
    path("v1/crash", crash),
    path("html/crash", crash),
    path("v1/database-down", database_down),
    path("html/database-down", database_down),
    path("", include("config.urls")),
]

handler500 = "plumbing.problems.handler500"
