"""API exceptions of our own (each carries its problem type slug)."""

from __future__ import annotations

from rest_framework import exceptions


class PayloadTooLarge(exceptions.APIException):
    status_code = 413
    default_detail = "Request body is larger than the limit."
    default_code = "payload_too_large"
    problem_slug = "payload-too-large"


class ServiceUnavailable(exceptions.APIException):
    status_code = 503
    default_detail = "A dependency is unavailable; retry later."
    default_code = "unavailable"
    problem_slug = "unavailable"


class GatewayTimeout(exceptions.APIException):
    status_code = 504
    default_detail = "The work did not finish before its deadline."
    default_code = "timeout"
    problem_slug = "timeout"
