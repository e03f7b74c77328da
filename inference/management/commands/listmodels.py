"""``manage.py listmodels``: every model and version with state, weight, availability, circuit
and recent health."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from inference.catalog import selectors


class Command(BaseCommand):
    help = (
        "List models and their versions: state, weight, whether each would be served now, its "
        "circuit and its recent error rate, p99 and last error."
    )

    def handle(self, *args: Any, **opts: Any) -> None:
        models = selectors.models_for_tenant(None)
        if not models:
            self.stdout.write("no models (try: manage.py builddigits)")
        states = selectors.version_states(v for model in models for v in model.versions.all())
        for model in models:
            self.stdout.write(f"{model.name}  [{model.task}]")
            for v in model.versions.all():
                marks = [
                    "stable" if v.pk == model.stable_version_id else "",
                    "shadow" if v.is_shadow else "",
                ]
                state = states[v.pk]
                self.stdout.write(
                    f"  {v.version:<10} {v.state:<8} weight={v.traffic_weight:<3} "
                    f"{v.runtime:<6} {v.device}/{v.queue:<5} {' '.join(m for m in marks if m):<13}"
                    f" {state.unavailable or 'available'}"
                )
                self.stdout.write(f"  {'':<10} {state.summary()}")
                last_error = state.last_error()
                if last_error is not None:
                    self.stdout.write(f"  {'':<10} last error {last_error}")
