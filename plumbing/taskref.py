"""Celery tasks by name. A service sends a task without importing the module that defines it
(a ``tasks`` module imports its services, never the other way round); the name is the one
given to ``@shared_task(name=...)``, found in the Celery app's task registry."""

from __future__ import annotations

from typing import Any

from celery import current_app


def task_named(name: str) -> Any:
    """The registered task ``name``. A web process has imported no ``tasks`` module until it
    first sends one: the apps' modules are then imported as a worker imports them
    (autodiscovery), once."""
    registry = current_app.tasks
    if name not in registry:
        current_app.loader.import_default_modules()
    return registry[name]
