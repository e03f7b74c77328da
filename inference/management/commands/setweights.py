"""``manage.py setweights NAME 1=90 2=10``: canary weights (relative) by version.

A version that goes from no traffic to some is checked first (docs/inference.md); a failed
check changes nothing. ``--skip-check REASON`` sets the weights without it (audited)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.management.cli import actor, skip_check_argument
from inference.models import Model
from inference.registry import services
from inference.registry.checks import describe


class Command(BaseCommand):
    help = "Set traffic weights: VERSION=WEIGHT pairs (0..100, relative to each other)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("weights", nargs="+", metavar="VERSION=WEIGHT")
        skip_check_argument(parser)

    def handle(self, *args: Any, **opts: Any) -> None:
        model = Model.objects.filter(name=opts["name"]).first()
        if model is None:
            raise CommandError(f"No model {opts['name']}.")
        weights: dict[str, int] = {}
        for pair in opts["weights"]:
            label, eq, weight = pair.partition("=")
            if not eq or not weight.isdigit():
                raise CommandError(f"Expected VERSION=WEIGHT, got {pair!r}.")
            weights[label] = int(weight)
        try:
            check = services.model_set_weights(
                model=model, weights=weights, actor=actor(), skip_check=opts["skip_check"]
            )
        except ValidationError as exc:
            raise CommandError(f"{'; '.join(exc.messages)} — weights unchanged") from exc
        self.stdout.write(
            f"{model}: "
            + ", ".join(f"{k}={v}" for k, v in weights.items())
            + f"; {describe(check)}"
        )
