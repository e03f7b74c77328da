"""``manage.py buildmlp``: build and register ``mlp``, the compute-bound benchmark model (an ONNX
multi-layer perceptron with seeded random weights); idempotent: same build, same version.

``--device cuda`` registers it on the ``gpu`` queue; ``--engine torch`` serves the same ONNX
artifact with PyTorch (for GPUs whose onnxruntime has no CUDA provider); ``--hidden`` sets the
hidden layers' widths (a wider MLP keeps a GPU busy)."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.registry.builtin import MLP_HIDDEN, mlp_install


def widths(text: str) -> tuple[int, ...]:
    try:
        found = tuple(int(part) for part in text.split(","))
    except ValueError:
        found = ()
    if not found or min(found) < 1:
        raise argparse.ArgumentTypeError("comma-separated positive widths, e.g. 2048,2048,1024")
    return found


class Command(BaseCommand):
    help = "Build and register the benchmark MLP (ONNX, random weights); offline."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--no-activate", action="store_true")
        parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
        parser.add_argument("--engine", choices=["onnx", "torch"], default="onnx")
        parser.add_argument(
            "--hidden",
            type=widths,
            default=MLP_HIDDEN,
            help="hidden layer widths (default: %(default)s)",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            version, created = mlp_install(
                activate=not opts["no_activate"],
                hidden=opts["hidden"],
                device=opts["device"],
                engine=opts["engine"],
            )
        except ImportError as exc:
            raise CommandError(
                f"{exc}; install with pip install -r requirements-models.txt"
            ) from exc
        verb = "registered" if created else "already registered"
        self.stdout.write(
            f"{verb} {version} ({version.state}, {version.runtime} on {version.device}, "
            f"sha256 {version.checksum[:12]})"
        )
