"""Python handler runtime: ``runtime_options["handler"]`` is a dotted path to a class.

The class is built as ``Handler(options=..., artifact=<bytes or None>)`` (``options`` are the
runtime options plus ``"device"``, the version's ``cpu`` or ``cuda``) and must have
``predict(batch: list[dict]) -> list[dict]``; it may have ``stream(item)``, ``warmup()`` and
``close()``. ``runtime_options["probe"]`` may name a function ``(options) -> reason | None``
for engines that are programs rather than modules. The handler's module is imported when the
version loads, in the worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.utils.module_loading import import_string

from inference.runtimes.base import (
    INSTALL_HINT,
    Item,
    Runtime,
    RuntimeUnavailable,
    engine_installed,
)


class PythonRuntime(Runtime):
    name = "python"
    handler: Any = None

    @classmethod
    def unavailable(cls, options: dict[str, Any]) -> str | None:
        path = options.get("handler")
        if not path or "." not in str(path):
            return "unavailable: runtime_options.handler must be a dotted path to a class"
        module = str(path).rpartition(".")[0]
        if not engine_installed(module):
            return f"unavailable: handler module {module} is not installed"
        # Engines the handler imports, so the web tier can say what is missing, and how to fix.
        for engine in options.get("requires") or []:
            if not engine_installed(str(engine)):
                hint = options.get("install_hint") or INSTALL_HINT
                return f"unavailable: {engine} is not installed ({hint})"
        # An engine that is not a Python module (a program) names a cheap check of its own.
        if options.get("probe"):
            try:
                check = import_string(str(options["probe"]))
            except ImportError as exc:
                return f"unavailable: cannot import probe: {exc}"
            reason: str | None = check(options)
            return reason
        return None

    def load(self, artifact: bytes | None) -> None:
        reason = self.unavailable(self.spec.options)
        if reason:
            raise RuntimeUnavailable(reason)
        try:
            cls = import_string(self.spec.options["handler"])
        except ImportError as exc:
            raise RuntimeUnavailable(f"unavailable: cannot import handler: {exc}") from exc
        try:
            # The version's device rides along, so a handler can place its model there.
            options = {**self.spec.options, "device": self.spec.device}
            self.handler = cls(options=options, artifact=artifact)
        except ImportError as exc:
            raise RuntimeUnavailable(f"unavailable: {exc} ({INSTALL_HINT})") from exc

    def predict(self, batch: list[Item]) -> list[Item]:
        return list(self.handler.predict(batch))

    def stream(self, item: Item) -> Iterator[Item]:
        if hasattr(self.handler, "stream"):
            yield from self.handler.stream(item)
        else:
            yield from super().stream(item)

    def warmup(self) -> None:
        if hasattr(self.handler, "warmup"):
            self.handler.warmup()

    def close(self) -> None:
        if hasattr(self.handler, "close"):
            self.handler.close()
        self.handler = None
