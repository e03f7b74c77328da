"""A URLconf with a view that crashes, to test the 500 answer on API paths."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import include, path


def crash(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom: internal detail that must not leak")


urlpatterns = [
    path("v1/crash", crash),
    path("html/crash", crash),
    path("", include("config.urls")),
]

handler500 = "config.problems.handler500"
