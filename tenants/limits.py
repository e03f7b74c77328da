"""Per-key and per-tenant request limits from the plan, and the monthly quota."""

from __future__ import annotations

import calendar
import logging
from typing import Any

from django.core.cache import cache
from django.http import HttpRequest
from django.utils import timezone
from redis.exceptions import RedisError
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from config import ratelimit
from config.exceptions import ServiceUnavailable
from tenants.selectors import KeyContext

log = logging.getLogger(__name__)


class QuotaExceeded(exceptions.Throttled):
    default_detail = "Monthly request quota exhausted."
    problem_slug = "quota-exceeded"


def _seconds_to_month_end() -> int:
    now = timezone.now()
    last = calendar.monthrange(now.year, now.month)[1]
    end = now.replace(day=last, hour=23, minute=59, second=59, microsecond=0)
    return max(1, int((end - now).total_seconds()) + 1)


def quota_use(tenant_id: int, limit: int) -> int | None:
    """Count one request against the tenant's calendar-month quota; the count, or None if the
    counter store is down (requests then pass: the quota is a billing bound, not a safety one)."""
    if not limit:
        return None
    key = f"quota:{tenant_id}:{timezone.now():%Y%m}"
    try:
        try:
            return int(cache.incr(key))  # one round trip on every request but the month's first
        except ValueError:  # no counter yet this month
            if cache.add(key, 1, timeout=_seconds_to_month_end() + 86400):
                return 1
            return int(cache.incr(key))  # another process created it first
    except (RedisError, OSError, ValueError):
        log.exception("quota counter unavailable", extra={"tenant_id": tenant_id})
        return None


def enforce_plan(request: HttpRequest, ctx: KeyContext) -> None:
    """Raise Throttled (429) if this request breaks the key's or tenant's limit or quota."""
    tenant = ctx.tenant
    try:
        checks = [("tenant", str(tenant.pk), tenant.requests_per_minute)]
        if ctx.requests_per_minute:
            checks.append(("key", ctx.prefix, ctx.requests_per_minute))
        for group, value, per_minute in checks:
            usage = ratelimit.hit(request, group=group, value=value, rate=f"{per_minute}/m")
            if usage is not None and usage.limited:
                raise exceptions.Throttled(
                    wait=usage.reset, detail=f"{group.capitalize()} limit of {per_minute}/min."
                )
    except ratelimit.LimiterUnavailable as exc:
        raise ServiceUnavailable("Rate limiting is unavailable; retry later.") from exc
    used = quota_use(tenant.pk, tenant.monthly_request_quota)
    if used is not None and used > tenant.monthly_request_quota:
        raise QuotaExceeded(wait=_seconds_to_month_end())


class PlanThrottle(BaseThrottle):
    """REST framework entry point for :func:`enforce_plan`."""

    def allow_request(self, request: Request, view: Any) -> bool:
        if isinstance(request.auth, KeyContext):
            enforce_plan(request._request, request.auth)
        return True
