from __future__ import annotations

from django.apps import AppConfig


class PlumbingConfig(AppConfig):
    """The shared library as an app (no models): so its tests and checks are found."""

    name = "plumbing"
