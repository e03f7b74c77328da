"""Celery tasks by name. A service sends a task without importing the module that defines it
(a ``tasks`` module imports its services, never the other way round); the name is the one
given to ``@shared_task(name=...)``, found in the Celery app's task registry."""

from __future__ import annotations

from typing import Any

from celery import current_app


def task_named(name: str) -> Any:
    """The registered task ``name`` (the app's ``tasks`` modules are autodiscovered)."""
    return current_app.tasks[name]
