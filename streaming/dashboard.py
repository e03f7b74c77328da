"""The admin's live metrics dashboard: a page that charts ``platform.metrics`` in the browser
(EventSource + canvas, no external scripts)."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from streaming.metrics import STREAM


@staff_member_required
def metrics_dashboard(request: HttpRequest) -> HttpResponse:
    context = {
        **admin.site.each_context(request),
        "title": "Live metrics",
        "events_url": f"/v1/streams/{STREAM}/events",
    }
    return render(request, "streaming/metrics.html", context)
