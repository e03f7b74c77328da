"""The home page at ``/`` (and the admin's "View site"): what Sluice is and where to go next;
with DEBUG only, the demo key and a curl that works with it."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from rest_framework.exceptions import AuthenticationFailed

from tenants.selectors import key_verify


def home(request: HttpRequest) -> HttpResponse:
    base = request.build_absolute_uri("/").rstrip("/")
    context = {
        **admin.site.each_context(request),
        "title": "Sluice",
        "base": base,
        "debug": settings.DEBUG,
        # Never read, let alone shown, without DEBUG: the page is public.
        "demo_key": demo_key() if settings.DEBUG else None,
    }
    return render(request, "home.html", context)


def demo_key() -> str | None:
    """The key ``manage.py demo`` saved, while it still verifies (a stale one would only
    teach a 401)."""
    try:
        raw = Path(settings.DEMO_KEY_FILE).read_text().strip()
    except OSError:
        return None
    try:
        key_verify(raw)
    except AuthenticationFailed:
        return None
    return raw
