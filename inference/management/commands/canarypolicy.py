"""``manage.py canarypolicy NAME [--window S --min-requests N --error-margin F --p99-ratio F |
--off]``: show or set the model's automatic canary rollback (docs/inference.md)."""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.management.cli import actor
from inference.models import Model
from inference.registry import services


class Command(BaseCommand):
    help = "Show or set a model's canary policy (options not given keep their defaults)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--window", type=int, help="Analysis window in seconds (60).")
        parser.add_argument("--min-requests", type=int, help="Requests before judging (20).")
        parser.add_argument(
            "--error-margin", type=float, help="Error rate allowed over the stable's (0.05)."
        )
        parser.add_argument(
            "--p99-ratio", type=float, help="p99 allowed as a multiple of the stable's (2)."
        )
        parser.add_argument("--no-p99", action="store_true", help="Do not judge latency.")
        parser.add_argument("--off", action="store_true", help="No automatic rollback.")

    def handle(self, *args: Any, **opts: Any) -> None:
        model = Model.objects.filter(name=opts["name"]).first()
        if model is None:
            raise CommandError(f"No model {opts['name']}.")
        given = {
            "window_seconds": opts["window"],
            "min_requests": opts["min_requests"],
            "max_error_rate_increase": opts["error_margin"],
            "max_p99_ratio": opts["p99_ratio"],
        }
        policy = {k: v for k, v in given.items() if v is not None}
        if opts["no_p99"]:
            policy["max_p99_ratio"] = None
        if opts["off"] and policy:
            raise CommandError("--off takes no other option.")
        if opts["off"] or policy:
            try:
                services.model_set_canary_policy(
                    model=model, policy={} if opts["off"] else policy, actor=actor()
                )
            except ValidationError as exc:
                raise CommandError("; ".join(exc.messages)) from exc
        shown = json.dumps(model.canary_policy) if model.canary_policy else "off"
        self.stdout.write(f"{model}: canary policy {shown}")
