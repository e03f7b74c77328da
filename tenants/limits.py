"""Per-key and per-tenant request limits from the plan, and the monthly quota."""

from __future__ import annotations

import calendar
import logging
from typing import Any

from django.http import HttpRequest
from django.utils import timezone
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


def quota_counter(tenant_id: int) -> ratelimit.Counter:
    """The tenant's counter for this calendar month."""
    return ratelimit.Counter(
        key=f"quota:{tenant_id}:{timezone.now():%Y%m}", timeout=_seconds_to_month_end() + 86400
    )


def enforce_plan(
    request: HttpRequest, ctx: KeyContext, *, ip: ratelimit.Check | None = None
) -> None:
    """Raise Throttled (429) if this request breaks the key's or tenant's limit or quota.

    The tenant limit, the key's own limit and the monthly quota are counted together (one
    Redis round trip); a request refused by a limit is taken back from the quota, so only
    requests that pass are billed. The quota fails open even when the limits fail closed.
    ``ip``: the per-IP check, counted in the same round trip and checked first, for a path
    that skips the middleware which counts it (the express lane, inference.express).
    """
    tenant = ctx.tenant
    checks = [ip] if ip is not None else []
    checks.append(ratelimit.Check("tenant", str(tenant.pk), f"{tenant.requests_per_minute}/m"))
    if ctx.requests_per_minute:
        checks.append(ratelimit.Check("key", ctx.prefix, f"{ctx.requests_per_minute}/m"))
    quota = [quota_counter(tenant.pk)] if tenant.monthly_request_quota else []
    try:
        usages, used = ratelimit.hit_many(request, checks, counters=quota)
    except ratelimit.LimiterUnavailable as exc:
        raise ServiceUnavailable("Rate limiting is unavailable; retry later.") from exc
    for check, usage in zip(checks, usages, strict=True):
        if usage is not None and usage.limited:
            if quota and used[0] is not None:
                ratelimit.uncount(quota)
            per_minute = check.rate.split("/")[0]
            if check is ip:  # the middleware's wording (and no "Expected available in …")
                refused = exceptions.Throttled(
                    detail=f"More than {usage.limit} requests from this address in the window."
                )
                refused.wait = usage.reset  # type: ignore[attr-defined]
                raise refused
            raise exceptions.Throttled(
                wait=usage.reset, detail=f"{check.group.capitalize()} limit of {per_minute}/min."
            )
    if quota and used[0] is not None and used[0] > tenant.monthly_request_quota:
        raise QuotaExceeded(wait=_seconds_to_month_end())


class PlanThrottle(BaseThrottle):
    """REST framework entry point for :func:`enforce_plan`."""

    def allow_request(self, request: Request, view: Any) -> bool:
        if isinstance(request.auth, KeyContext):
            enforce_plan(request._request, request.auth)
        return True
