"""``manage.py serve``: the all-in-one server of the quick start (and a small deployment)."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Serve HTTP and WebSocket with daphne, with an in-process Celery worker."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--no-worker", action="store_true", help="Serve only.")

    def handle(self, *args: Any, **opts: Any) -> None:
        from daphne.endpoints import build_endpoint_description_strings
        from daphne.server import Server

        from config.asgi import application
        from config.embedded import start_worker

        worker = None if opts["no_worker"] else start_worker()
        mode = "embedded (SQLite, in-memory)" if settings.EMBEDDED else "PostgreSQL + Redis"
        self.stdout.write(f"Sluice serving on http://{opts['host']}:{opts['port']}/ [{mode}]")
        try:
            Server(
                application=application,
                endpoints=build_endpoint_description_strings(host=opts["host"], port=opts["port"]),
                verbosity=0,  # the request log middleware writes one line per request
            ).run()
        finally:
            if worker is not None:
                worker.stop(in_sighandler=False)
