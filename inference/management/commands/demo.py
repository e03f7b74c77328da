"""Load the demo: a tenant, a key and the built-in models. Idempotent: the key is kept in
DEMO_KEY_FILE (var/demo-key: git-ignored, mode 600) and reused while it still verifies, so
``make run`` and the home page (with DEBUG) show the same working key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from rest_framework.exceptions import AuthenticationFailed

from inference.registry.builtin import (
    MEDIA_INSTALLS,
    digits_install,
    embeddings_install,
    sentiment_install,
    textgen_install,
)
from tenants.selectors import key_verify
from tenants.services import apikey_create, demo_load


class Command(BaseCommand):
    help = "Create the demo tenant, key and built-in models (idempotent); print the key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--key-file", default=str(settings.DEMO_KEY_FILE))

    def handle(self, *args: Any, **opts: Any) -> None:
        tenant = demo_load()
        self._builtin_models()
        path = Path(opts["key_file"])
        raw = path.read_text().strip() if path.exists() else ""
        try:
            if not raw:
                raise AuthenticationFailed("no saved key")
            key_verify(raw)
        except AuthenticationFailed:
            _, raw = apikey_create(
                tenant=tenant, name="demo", scopes=["infer", "jobs", "streams", "admin"]
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(raw + "\n")
        self.stdout.write(raw)

    def _builtin_models(self) -> None:
        # stdout carries only the key (make run captures it); progress goes to stderr.
        try:
            version, created = digits_install(actor="demo")
        except ImportError as exc:
            self.stderr.write(
                f"built-in model digits skipped: {exc} — install with "
                "pip install -r requirements-models.txt"
            )
        else:
            if created:
                self.stderr.write(f"built-in model {version} registered")
        # Trains a tiny GPT-2 the first time (about a minute; cached in var/cache after that);
        # without torch it registers the model as unavailable with the install hint. Registered
        # before the handler models: a starting worker preloads the newest versions first, and
        # embeddings (slow to load) must not wait behind the demo's toy text model.
        version, created = textgen_install(actor="demo")
        if created:
            self.stderr.write(f"built-in model {version} registered ({version.runtime})")
        # Handler models register without their engine: a worker without it shows them
        # "unavailable" with the install hint instead of failing.
        for install in (sentiment_install, embeddings_install, *MEDIA_INSTALLS):
            version, created = install(actor="demo")
            if created:
                self.stderr.write(f"built-in model {version} registered")
