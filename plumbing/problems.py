"""RFC 9457 problem details: the one shape of every API error.

Problem types are URNs (``urn:sluice:problem:<slug>``), each listed in docs/errors.md; plain
HTTP errors without a more specific meaning use ``about:blank`` as the RFC suggests.
"""

from __future__ import annotations

import sys
from http import HTTPStatus
from typing import Any

from django import db
from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions
from rest_framework.response import Response

from plumbing.exceptions import PayloadTooLarge

PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem_body(
    status: int,
    *,
    slug: str | None = None,
    title: str | None = None,
    detail: str | None = None,
    instance: str | None = None,
    **extensions: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"urn:sluice:problem:{slug}" if slug else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extensions)
    return body


def problem_response(
    status: int, *, headers: dict[str, str] | None = None, **fields: Any
) -> JsonResponse:
    response = JsonResponse(
        problem_body(status, **fields), status=status, content_type=PROBLEM_CONTENT_TYPE
    )
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def is_api_path(path: str) -> bool:
    return path.startswith(settings.API_PATH_PREFIXES)


def _join(path: str, key: Any) -> str:
    if key == "non_field_errors":
        return path
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _flatten_errors(detail: Any, path: str = "") -> list[dict[str, str]]:
    """DRF's nested error dict as a flat list of {field, detail, code}; "" is the whole body."""
    if isinstance(detail, dict):
        return [
            err for key, value in detail.items() for err in _flatten_errors(value, _join(path, key))
        ]
    if isinstance(detail, list):
        if all(isinstance(item, exceptions.ErrorDetail) for item in detail):
            return [{"field": path, "detail": str(d), "code": d.code or "invalid"} for d in detail]
        return [
            err for i, item in enumerate(detail) for err in _flatten_errors(item, _join(path, i))
        ]
    code = getattr(detail, "code", "invalid") or "invalid"
    return [{"field": path, "detail": str(detail), "code": str(code)}]


_SLUGS: dict[type[Exception], str] = {
    exceptions.NotAuthenticated: "not-authenticated",
    exceptions.AuthenticationFailed: "authentication-failed",
    exceptions.PermissionDenied: "permission-denied",
    exceptions.NotFound: "not-found",
    exceptions.MethodNotAllowed: "method-not-allowed",
    exceptions.NotAcceptable: "not-acceptable",
    exceptions.UnsupportedMediaType: "unsupported-media-type",
    exceptions.Throttled: "rate-limited",
    exceptions.ParseError: "malformed-request",
}


def drf_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """REST framework's EXCEPTION_HANDLER: every error an API view raises, as a problem."""
    # Imported here: rest_framework.views reads the API settings, which import this module.
    from rest_framework.views import exception_handler as drf_default_handler

    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        )
    response = drf_default_handler(exc, context)
    if response is None:
        return None  # an unexpected error: Django's handler500 answers (see config.urls)
    request = context.get("request")
    instance = request.path if request is not None else None
    if isinstance(exc, exceptions.ValidationError):
        body = problem_body(
            422,
            slug="validation-error",
            title="Request body failed validation",
            detail="One or more fields are invalid.",
            instance=instance,
            errors=_flatten_errors(exc.detail),
        )
        response.status_code = 422
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        slug = getattr(exc, "problem_slug", None) or next(
            (s for cls, s in _SLUGS.items() if isinstance(exc, cls)), None
        )
        extra = dict(getattr(exc, "problem_extensions", {}))
        body = problem_body(
            response.status_code,
            slug=slug,
            detail=str(detail) if not isinstance(detail, (dict, list)) else None,
            instance=instance,
            **extra,
        )
    response.data = body
    response.content_type = PROBLEM_CONTENT_TYPE
    return response


def exception_response(request: HttpRequest, exc: Exception) -> JsonResponse:
    """An error raised outside a REST framework view (SSE and media start-up, the unary front
    inference lane) as the same problem+json, status and headers a view would answer with.
    Re-raises what the handler does not know (an unexpected error: a 500)."""
    response = drf_exception_handler(exc, {"request": None})
    if response is None:
        raise exc
    body = dict(response.data)
    body["instance"] = request.path
    out = JsonResponse(body, status=response.status_code, content_type=PROBLEM_CONTENT_TYPE)
    if response.has_header("Retry-After"):
        out["Retry-After"] = response["Retry-After"]
    if response.status_code == 401:
        out["WWW-Authenticate"] = 'Bearer realm="sluice"'
    return out


def api_not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    """Unknown API paths answer problem+json even with DEBUG on, where Django would answer
    an API client with its HTML technical 404 page."""
    return problem_response(404, detail="No such API endpoint.", instance=request.path)


def database_unavailable(exc: BaseException | None) -> bool:
    """Whether ``exc`` says the database cannot be reached or used now (refused, timed out,
    out of connections, gone mid-query): worth a retry, not a bug."""
    return isinstance(exc, (db.OperationalError, db.InterfaceError))


def database_unavailable_response(request: HttpRequest) -> HttpResponse:
    """503 with ``Retry-After``: problem+json on API paths, plain text elsewhere."""
    headers = {"Retry-After": str(settings.DATABASE_RETRY_AFTER_SECONDS)}
    if is_api_path(request.path):
        return problem_response(
            503,
            slug="unavailable",
            detail="The database is unavailable; retry later.",
            instance=request.path,
            headers=headers,
        )
    response = HttpResponse(
        "The database is unavailable; retry later.\n", status=503, content_type="text/plain"
    )
    response["Retry-After"] = headers["Retry-After"]
    return response


def _django_error(status: int, fallback: Any) -> Any:
    def handler(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
        if is_api_path(request.path):
            return problem_response(status, instance=request.path)
        if exception is None:
            return fallback(request)
        return fallback(request, exception)

    return handler


handler400 = _django_error(400, defaults.bad_request)
handler403 = _django_error(403, defaults.permission_denied)
handler404 = _django_error(404, defaults.page_not_found)
_server_error = _django_error(500, defaults.server_error)


def handler500(request: HttpRequest) -> HttpResponse:
    """Django's last resort, reached with the exception being handled (a database error in a
    middleware or the front door answers 503, not 500)."""
    if database_unavailable(sys.exc_info()[1]):
        return database_unavailable_response(request)
    return _server_error(request)
