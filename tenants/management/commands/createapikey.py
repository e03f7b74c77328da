from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from tenants.models import Tenant
from tenants.services import apikey_create

_DURATION = re.compile(r"^(\d+)([hdw])$")
_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def parse_expiry(value: str | None) -> datetime | None:
    """``30d``, ``12h``, ``2w`` from now, or an ISO 8601 date-time."""
    if not value:
        return None
    match = _DURATION.match(value)
    if match:
        n, unit = int(match[1]), match[2]
        return timezone.now() + timedelta(**{_UNITS[unit]: n})
    when = parse_datetime(value)
    if when is None:
        raise CommandError(f"--expires {value!r}: use e.g. 30d, 12h or 2027-01-31T00:00:00Z")
    return when if timezone.is_aware(when) else timezone.make_aware(when)


class Command(BaseCommand):
    help = "Create an API key for a tenant and print it (the only time it is shown)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="Tenant slug.")
        parser.add_argument("--name", default="cli")
        parser.add_argument("--scopes", default="infer,jobs,streams")
        parser.add_argument("--expires", help="30d, 12h, 2w, or an ISO date-time.")
        parser.add_argument("--rpm", type=int, help="Per-key requests per minute.")

    def handle(self, *args: Any, **opts: Any) -> None:
        tenant = Tenant.objects.filter(slug=opts["tenant"]).first()
        if tenant is None:
            raise CommandError(f"No tenant {opts['tenant']!r}.")
        try:
            _, raw = apikey_create(
                tenant=tenant,
                name=opts["name"],
                scopes=opts["scopes"].split(","),
                expires_at=parse_expiry(opts["expires"]),
                requests_per_minute=opts["rpm"],
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(raw)
