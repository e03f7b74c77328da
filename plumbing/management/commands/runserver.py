"""``manage.py runserver`` (daphne's, so WebSocket works) saying at start what it will not
serve: it starts no worker, so inference is refused with 503 ``no-worker`` (docs/errors.md)
unless one runs. ``manage.py serve`` is the all-in-one server."""

from __future__ import annotations

from typing import Any

from daphne.management.commands.runserver import Command as DaphneRunserver

from plumbing.presence import no_worker_warning


class Command(DaphneRunserver):
    def inner_run(self, *args: Any, **options: Any) -> None:
        self.stderr.write(no_worker_warning("runserver"), style_func=self.style.WARNING)
        super().inner_run(*args, **options)
