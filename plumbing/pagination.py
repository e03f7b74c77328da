"""Pagination whose query parameters are validated, not guessed at.

REST framework falls back to the default page size for a ``limit`` it cannot read and passes
any offset or cursor position through to the database, where a number past 64 bits is a
``bigint out of range`` (a 500). Here ``limit``, ``offset`` and ``cursor`` are checked: a page
size above ``MAX_PAGE_SIZE`` is clamped to it (a client asking for "as many as you give"
gets a full page); anything else that is not a whole number in range (a ``limit`` under 1, an
``offset`` past 64 bits) — or a cursor this API did not hand out — is a 422 naming the
parameter (docs/errors.md).
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions, pagination
from rest_framework.request import Request

from plumbing.untrusted import query_int, whole

MAX_PAGE_SIZE = 1000


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    """``?limit=`` (1 to ``MAX_PAGE_SIZE``; larger is clamped) and ``?offset=`` (0 to
    2**63 - 1)."""

    max_limit = MAX_PAGE_SIZE

    def get_limit(self, request: Request) -> int | None:
        limit = query_int(
            request.query_params,
            self.limit_query_param,
            minimum=1,
            maximum=self.max_limit,
            clamp=True,
        )
        return self.default_limit if limit is None else limit

    def get_offset(self, request: Request) -> int:
        return query_int(request.query_params, self.offset_query_param) or 0

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.limit_query_param:
                parameter["schema"]["minimum"] = 1
                parameter["description"] += f" At most {self.max_limit}; more is clamped."
            elif parameter["name"] == self.offset_query_param:
                parameter["schema"]["minimum"] = 0
        return parameters


class IntegerCursorPagination(pagination.CursorPagination):
    """Cursor pagination over an integer ordering: ``?limit=`` as above, and a ``?cursor=``
    that does not decode, or whose position is not a 64-bit integer, is a 422."""

    max_page_size = MAX_PAGE_SIZE
    page_size_query_param = "limit"

    def get_page_size(self, request: Request) -> int | None:
        size = query_int(
            request.query_params,
            self.page_size_query_param,
            minimum=1,
            maximum=self.max_page_size,
            clamp=True,
        )
        return self.page_size if size is None else size

    def decode_cursor(self, request: Request) -> Any:
        invalid = exceptions.ValidationError(
            {self.cursor_query_param: ["Not a cursor this API handed out."]}
        )
        try:
            cursor = super().decode_cursor(request)
        except exceptions.NotFound:  # REST framework's answer to a cursor it cannot read
            raise invalid from None
        position = None if cursor is None else cursor.position
        if position is not None and whole(str(position)) is None:
            raise invalid
        return cursor
