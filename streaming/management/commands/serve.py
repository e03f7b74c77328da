"""``manage.py serve``: daphne configured for Sluice (``streaming.server``). The all-in-one
server of the quick start (with an in-process Celery worker) and, with ``--no-worker``, the
production ASGI process."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Serve HTTP and WebSocket with daphne (and an in-process Celery worker)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--no-worker", action="store_true", help="Serve only.")

    def handle(self, *args: Any, **opts: Any) -> None:
        # Imported here: daphne installs Twisted's asyncio reactor when it is imported.
        from channels.routing import get_default_application
        from daphne.endpoints import build_endpoint_description_strings

        from plumbing.embedded import start_worker
        from plumbing.presence import no_worker_warning
        from streaming.server import SluiceServer, closing_handshake

        application = get_default_application()  # settings.ASGI_APPLICATION

        server: Any = SluiceServer(
            application=application,
            endpoints=build_endpoint_description_strings(host=opts["host"], port=opts["port"]),
            verbosity=0,  # the request log middleware writes one line per request
            # No proxy_forwarded_* options: daphne would believe X-Forwarded-For from any peer
            # (its left-most, client-written address). The client address stays the socket's,
            # and plumbing/net.py reads the headers from trusted proxies only.
            # A WebSocket message over the limit is refused by the protocol layer with 1009 (an
            # application may only send 1000 and 3000-4999) ...
            websocket_max_message_size=settings.WS_MAX_FRAME_BYTES,
            websocket_max_frame_size=settings.WS_MAX_FRAME_BYTES,
            # ... with a closing handshake the client can read, not autobahn's default of
            # dropping the TCP connection (which the client sees as 1006).
            ready_callable=lambda: closing_handshake(server),
        )
        worker = None if opts["no_worker"] else start_worker()
        if worker is None:
            self.stderr.write(no_worker_warning("serve --no-worker"), style_func=self.style.WARNING)
        from streaming.metrics import start_sampler

        start_sampler()  # one leader among the ASGI processes samples the platform each second
        mode = "embedded (SQLite, in-memory)" if settings.EMBEDDED else "PostgreSQL + Redis"
        self.stdout.write(f"Sluice serving on http://{opts['host']}:{opts['port']}/ [{mode}]")
        try:
            server.run()
        finally:
            if worker is not None:
                worker.stop(in_sighandler=False)
