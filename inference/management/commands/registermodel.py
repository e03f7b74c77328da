"""``manage.py registermodel NAME VERSION --runtime onnx --artifact model.onnx [--activate]``

``--activate`` runs the pre-activation check first (docs/inference.md); when it fails the
version stays a draft and the command fails with the engine's error. ``--skip-check REASON``
activates without it (audited)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.management.cli import actor
from inference.models import Model, ModelVersion
from inference.registry import services
from inference.registry.checks import describe


def _json(value: str) -> Any:
    """Inline JSON, or @path to a JSON file."""
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"Not valid JSON: {exc}") from exc


class Command(BaseCommand):
    help = "Register a model version (a draft unless --activate)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("version")
        parser.add_argument("--runtime", choices=ModelVersion.Runtime.values, required=True)
        parser.add_argument("--artifact", help="Path of the model file (ONNX).")
        parser.add_argument("--handler", help="Python runtime: dotted path to the class.")
        parser.add_argument("--options", default="{}", help="runtime_options: JSON or @file.")
        parser.add_argument("--input-schema", default="{}", help="JSON Schema subset or @file.")
        parser.add_argument(
            "--examples", default="[]", help="Example inputs for the check: a JSON list or @file."
        )
        parser.add_argument("--task", choices=Model.Task.values, default=Model.Task.OTHER)
        parser.add_argument("--device", choices=ModelVersion.Device.values, default="cpu")
        parser.add_argument("--queue", help="Celery queue (default: cpu, or gpu for cuda).")
        parser.add_argument("--max-batch-size", type=int, default=8)
        parser.add_argument("--max-delay-ms", type=int, default=5)
        parser.add_argument("--activate", action="store_true")
        parser.add_argument(
            "--skip-check",
            metavar="REASON",
            help="Activate without the pre-activation check; the reason is audited.",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["skip_check"] is not None and not opts["activate"]:
            raise CommandError("--skip-check goes with --activate.")
        options = _json(opts["options"])
        if opts["handler"]:
            options["handler"] = opts["handler"]
        artifact = Path(opts["artifact"]).read_bytes() if opts["artifact"] else None
        try:
            version = services.version_register(
                model_name=opts["name"],
                version=opts["version"],
                runtime=opts["runtime"],
                artifact=artifact,
                artifact_filename=Path(opts["artifact"]).name if opts["artifact"] else "",
                runtime_options=options,
                input_schema=_json(opts["input_schema"]),
                examples=_json(opts["examples"]),
                device=opts["device"],
                queue=opts["queue"],
                max_batch_size=opts["max_batch_size"],
                max_delay_ms=opts["max_delay_ms"],
                task=opts["task"],
                actor=actor(),
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(f"registered {version} (draft, sha256 {version.checksum[:12]})")
        if opts["activate"]:
            try:
                check = services.version_activate(
                    version=version, actor=actor(), skip_check=opts["skip_check"]
                )
            except ValidationError as exc:
                raise CommandError(f"{'; '.join(exc.messages)} — {version} stays a draft") from exc
            version.refresh_from_db()
            self.stdout.write(f"{version} is {version.state}; {describe(check)}")
