"""ASGI entry point of the unary inference server (uvicorn): the front door on an event loop
(``inference.api.frontdoor``) in front of Django's ASGI handler. nginx sends it
``POST /v1/models/{name}/infer`` (``?stream=true`` too: Django's handler streams it); WebSocket
and the other streams stay on daphne (``config.asgi``), the rest of the API on gunicorn
(``config.wsgi``)."""

from __future__ import annotations

import os

from streaming.handler import asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = asgi_application()  # Django's handler, closing what a client leaves behind

from django.conf import settings  # noqa: E402

from config.startup import freeze_startup_objects  # noqa: E402
from inference.api.frontdoor import FrontDoor  # noqa: E402
from plumbing import metrics  # noqa: E402
from plumbing.bodylimit import LimitASGI  # noqa: E402

metrics.serve_as("unary")  # its requests, served or handed over, are the unary tier's
front = FrontDoor(django_asgi_app) if settings.INFERENCE_FRONT_DOOR else django_asgi_app
# Outermost: an oversized body is refused before anything reads it (plumbing/bodylimit.py).
application = LimitASGI(front)

freeze_startup_objects()
