"""``manage.py buildtextgen``: train the built-in ``textgen`` model (a tiny GPT-2) on the
public-domain text bundled in ``inference/data`` and register it; offline, cached."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.registry.builtin import textgen_install
from inference.runtimes import unavailable_reason


class Command(BaseCommand):
    help = "Train and register the built-in textgen model (tiny GPT-2, about a minute of CPU)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--no-activate", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        reason = unavailable_reason("transformers", {})
        if reason:
            raise CommandError(reason)
        version, created = textgen_install(actor="buildtextgen", activate=not opts["no_activate"])
        verb = "registered" if created else "already registered"
        self.stdout.write(f"{verb} {version} ({version.state}, sha256 {version.checksum[:12]})")
