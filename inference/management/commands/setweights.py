"""``manage.py setweights NAME 1=90 2=10``: canary weights (relative) by version."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference import services
from inference.models import Model


class Command(BaseCommand):
    help = "Set traffic weights: VERSION=WEIGHT pairs (0..100, relative to each other)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("weights", nargs="+", metavar="VERSION=WEIGHT")

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
            services.model_set_weights(model=model, weights=weights, actor="manage.py")
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(f"{model}: " + ", ".join(f"{k}={v}" for k, v in weights.items()))
