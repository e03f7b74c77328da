"""``manage.py rollback NAME``: cut canary traffic, or undo the last promotion."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.models import Model
from inference.registry import services


class Command(BaseCommand):
    help = "Send all traffic back to the stable version (or the one before the last promotion)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")

    def handle(self, *args: Any, **opts: Any) -> None:
        model = Model.objects.filter(name=opts["name"]).first()
        if model is None:
            raise CommandError(f"No model {opts['name']}.")
        try:
            target = services.model_rollback(model=model, actor="manage.py")
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(f"{model}: all traffic on version {target.version}")
