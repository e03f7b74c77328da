"""``manage.py buildmlp``: build and register ``mlp``, the compute-bound benchmark model (an ONNX
multi-layer perceptron with seeded random weights); idempotent: same build, same version."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.builtin import mlp_install


class Command(BaseCommand):
    help = "Build and register the benchmark MLP (ONNX, random weights); offline."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--no-activate", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            version, created = mlp_install(activate=not opts["no_activate"])
        except ImportError as exc:
            raise CommandError(
                f"{exc}; install with pip install -r requirements-models.txt"
            ) from exc
        verb = "registered" if created else "already registered"
        self.stdout.write(f"{verb} {version} ({version.state}, sha256 {version.checksum[:12]})")
