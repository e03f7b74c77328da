"""``manage.py buildtextgen``: rebuild the built-in ``textgen`` artifact kept in the repository
(``inference/data/textgen.zip``): train the tiny GPT-2 on the bundled public-domain text
(deterministic seeds; cached in ``var/cache``), export it to ONNX, and compare its greedy tokens
with the committed artifact's. Needs torch and transformers (the dev install); serving does
not: ``manage.py demo`` registers the committed artifact."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.registry import textgen


class Command(BaseCommand):
    help = (
        "Rebuild the textgen ONNX artifact (tiny GPT-2 trained on inference/data, about a "
        "minute of CPU) and compare it with the committed one; --write replaces it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--write", action="store_true", help="replace the artifact with the rebuilt one"
        )
        parser.add_argument(
            "--no-cache", action="store_true", help="train afresh even if var/cache has it"
        )
        parser.add_argument("--output", default=str(textgen.ARTIFACT), help="where --write writes")

    def handle(self, *args: Any, **opts: Any) -> None:
        for module in ("torch", "transformers"):
            if importlib.util.find_spec(module) is None:
                raise CommandError(
                    f"{module} is not installed — building textgen needs the dev install: "
                    "pip install -r requirements-models-extra.txt"
                )
        built = textgen.textgen_build(use_cache=not opts["no_cache"])
        artifact = textgen.export(built.archive)
        how = "from var/cache" if built.cached else f"trained in {built.seconds:.0f} s"
        self.stdout.write(
            f"textgen {how}: {built.parameters} parameters, loss {built.loss:.2f}; artifact "
            f"{len(artifact)} bytes, sha256 {hashlib.sha256(artifact).hexdigest()[:12]}"
        )
        committed = textgen.ARTIFACT
        if committed.exists():
            same = textgen.greedy_tokens(artifact) == textgen.greedy_tokens(committed.read_bytes())
            identical = artifact == committed.read_bytes()
            self.stdout.write(
                f"against {committed.name}: "
                + ("identical bytes" if identical else "different bytes")
                + ("; same greedy tokens" if same else "; DIFFERENT greedy tokens")
            )
        if opts["write"]:
            output = Path(opts["output"])
            output.write_bytes(artifact)
            self.stdout.write(f"wrote {output}")
