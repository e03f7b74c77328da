"""Per-key and per-tenant request limits from the plan, and the monthly quota."""

from __future__ import annotations

import calendar
import logging
from dataclasses import dataclass, field
from typing import Any

from django.http import HttpRequest
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from plumbing import ratelimit
from plumbing.exceptions import ServiceUnavailable
from tenants.models import Tenant
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


@dataclass
class PlanTicket:
    """One request's limits — the per-IP limit if the caller counts it, the tenant's and the
    key's requests per minute, the monthly quota — ready to be counted now
    (:func:`enforce_plan`) or with the request's batch (:func:`settle`). After counting:
    ``usages`` (for the ``RateLimit-*`` headers) and ``refusal`` (what to answer instead)."""

    tenant: Tenant
    checks: list[ratelimit.Check]
    quota: list[ratelimit.Counter]
    ip: ratelimit.Check | None = None
    usages: list[ratelimit.Usage] = field(default_factory=list)
    refusal: exceptions.APIException | None = None
    counted: bool = False


def plan_ticket(ctx: KeyContext, *, ip: ratelimit.Check | None = None) -> PlanTicket:
    tenant = ctx.tenant
    checks = [ip] if ip is not None else []
    checks.append(ratelimit.Check("tenant", str(tenant.pk), f"{tenant.requests_per_minute}/m"))
    if ctx.requests_per_minute:
        checks.append(ratelimit.Check("key", ctx.prefix, f"{ctx.requests_per_minute}/m"))
    quota = [quota_counter(tenant.pk)] if tenant.monthly_request_quota else []
    return PlanTicket(tenant, [c for c in checks if c.rate], quota, ip)


def _judge(
    ticket: PlanTicket, usages: list[ratelimit.Usage | None], used: list[int | None]
) -> bool:
    """Set the ticket's usages and refusal; whether the quota should be taken back (a limit
    refused the request after the quota counted it)."""
    ticket.counted = True
    ticket.usages = [u for u in usages if u is not None]
    for check, usage in zip(ticket.checks, usages, strict=False):  # none when limits are off
        if usage is not None and usage.limited:
            if check is ticket.ip:  # the middleware's wording (and no "Expected available in …")
                refused = exceptions.Throttled(
                    detail=f"More than {usage.limit} requests from this address in the window."
                )
                refused.wait = usage.reset  # type: ignore[attr-defined]
                ticket.refusal = refused
            else:
                per_minute = check.rate.split("/")[0]
                ticket.refusal = exceptions.Throttled(
                    wait=usage.reset,
                    detail=f"{check.group.capitalize()} limit of {per_minute}/min.",
                )
            return bool(ticket.quota) and used[0] is not None
    quota = ticket.tenant.monthly_request_quota
    if ticket.quota and used[0] is not None and used[0] > quota:
        ticket.refusal = QuotaExceeded(wait=_seconds_to_month_end())
    return False


def enforce_plan(
    request: HttpRequest, ctx: KeyContext, *, ip: ratelimit.Check | None = None
) -> None:
    """Raise Throttled (429) if this request breaks the key's or tenant's limit or quota.

    The tenant limit, the key's own limit and the monthly quota are counted together (one
    Redis round trip); a request refused by a limit is taken back from the quota, so only
    requests that pass are billed. The quota fails open even when the limits fail closed.
    ``ip``: the per-IP check, counted in the same round trip and checked first, for a path
    that skips the middleware which counts it (the unary front door).
    """
    ticket = plan_ticket(ctx, ip=ip)
    try:
        usages, used = ratelimit.hit_many(request, ticket.checks, counters=ticket.quota)
    except ratelimit.LimiterUnavailable as exc:
        raise ServiceUnavailable("Rate limiting is unavailable; retry later.") from exc
    if _judge(ticket, usages, used):
        ratelimit.uncount(ticket.quota)
    if ticket.refusal is not None:
        raise ticket.refusal


def settle(tickets: list[PlanTicket]) -> None:
    """Count many requests' tickets in one round trip (a web-side batch of the front door;
    Redis only, :func:`plumbing.ratelimit.counts_in_batches`), with the same decisions as
    :func:`enforce_plan` made per request; refused requests are taken back from the quota in
    one more round trip, only when there are any."""
    try:
        counted = ratelimit.hit_batch([(t.checks, t.quota) for t in tickets])
    except ratelimit.LimiterUnavailable:
        for ticket in tickets:
            ticket.counted = True
            ticket.refusal = ServiceUnavailable("Rate limiting is unavailable; retry later.")
        return
    take_back: list[ratelimit.Counter] = []
    for ticket, (usages, used) in zip(tickets, counted, strict=True):
        if _judge(ticket, usages, used):
            take_back += ticket.quota
    if take_back:
        ratelimit.uncount(take_back)


class PlanThrottle(BaseThrottle):
    """REST framework entry point for :func:`enforce_plan`."""

    def allow_request(self, request: Request, view: Any) -> bool:
        if isinstance(request.auth, KeyContext):
            enforce_plan(request._request, request.auth)
        return True
