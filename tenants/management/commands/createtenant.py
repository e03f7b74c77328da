from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.services import tenant_create


class Command(BaseCommand):
    help = "Create a tenant."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--slug")
        parser.add_argument("--rpm", type=int, help="Requests per minute.")
        parser.add_argument("--streams", type=int, help="Concurrent streams.")
        parser.add_argument("--quota", type=int, help="Monthly request quota (0: unlimited).")
        parser.add_argument("--models", default="", help="Comma-separated allowed model names.")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            tenant = tenant_create(
                name=opts["name"],
                slug=opts["slug"],
                requests_per_minute=opts["rpm"],
                concurrent_streams=opts["streams"],
                monthly_request_quota=opts["quota"],
                allowed_models=[m for m in opts["models"].split(",") if m],
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(tenant.slug)
