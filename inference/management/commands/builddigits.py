"""``manage.py builddigits``: train the built-in ``digits`` model on scikit-learn's bundled
digits data, export it to ONNX and register it (idempotent: same build, same version)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.registry.builtin import digits_install


class Command(BaseCommand):
    help = "Build and register the built-in digits model (scikit-learn → ONNX); offline."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--no-activate", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            version, created = digits_install(activate=not opts["no_activate"])
        except ImportError as exc:
            raise CommandError(
                f"{exc}; install with pip install -r requirements-models.txt"
            ) from exc
        verb = "registered" if created else "already registered"
        self.stdout.write(f"{verb} {version} ({version.state}, sha256 {version.checksum[:12]})")
