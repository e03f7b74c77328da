from __future__ import annotations

from django.apps import AppConfig


class ProjectConfig(AppConfig):
    """The project package as an app, for commands that span the other apps."""

    name = "config"
    label = "sluice"
