"""The SSE endpoint in the OpenAPI schema (it is a plain async view, which drf-spectacular
does not discover)."""

from __future__ import annotations

from typing import Any


def add_sse_paths(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict:
    result.setdefault("paths", {})["/v1/streams/{stream_id}/events"] = {
        "get": {
            "operationId": "streams_events",
            "summary": "A stream as Server-Sent Events",
            "description": (
                "`id:`/`event:`/`data:` lines (data is the event's JSON); resume with the "
                "`Last-Event-ID` header or `?after=`; a comment line every "
                "SSE_HEARTBEAT_SECONDS; ends after the `end` event. Event types: docs/streams.md."
            ),
            "tags": ["streams"],
            "parameters": [
                {"name": "stream_id", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                },
            ],
            "security": [{"ApiKeyAuth": []}, {"BearerAuth": []}],
            "responses": {
                "200": {
                    "description": "The event stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "401": {"description": "Not authenticated"},
                "404": {"description": "No such stream (or another tenant's)"},
            },
        }
    }
    return result
