"""``manage.py registermodel NAME VERSION --runtime onnx --artifact model.onnx [--activate]``"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference import services
from inference.models import Model, ModelVersion


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
        parser.add_argument("--task", choices=Model.Task.values, default=Model.Task.OTHER)
        parser.add_argument("--device", choices=ModelVersion.Device.values, default="cpu")
        parser.add_argument("--queue", help="Celery queue (default: cpu, or gpu for cuda).")
        parser.add_argument("--max-batch-size", type=int, default=8)
        parser.add_argument("--max-delay-ms", type=int, default=5)
        parser.add_argument("--activate", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
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
                device=opts["device"],
                queue=opts["queue"],
                max_batch_size=opts["max_batch_size"],
                max_delay_ms=opts["max_delay_ms"],
                task=opts["task"],
                actor="manage.py",
            )
            if opts["activate"]:
                services.version_activate(version=version, actor="manage.py")
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        version.refresh_from_db()
        self.stdout.write(f"registered {version} ({version.state}, sha256 {version.checksum[:12]})")
