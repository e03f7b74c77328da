"""``manage.py promote NAME VERSION``: the version becomes stable and takes all traffic; one
that serves none now is checked first (``--skip-check REASON``: without it, audited)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.management.cli import actor, skip_check_argument
from inference.registry import services
from inference.registry.checks import describe


class Command(BaseCommand):
    help = "Promote a version to stable (100% of traffic); others stay active at weight 0."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("version")
        skip_check_argument(parser)

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            version = services.version_find(model_name=opts["name"], version=opts["version"])
            check = services.version_promote(
                version=version, actor=actor(), skip_check=opts["skip_check"]
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(f"{version} is stable; {describe(check)}")
