"""The job events endpoint in the OpenAPI schema (an async view, which drf-spectacular does
not discover)."""

from __future__ import annotations

from typing import Any


def add_sse_paths(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict:
    result.setdefault("paths", {})["/v1/jobs/{job_id}/events"] = {
        "get": {
            "operationId": "jobs_events",
            "summary": "A job's progress as Server-Sent Events",
            "description": (
                "A `progress` event per finished chunk (`{job, status, total, done, succeeded, "
                "failed, cancelled}`), then one `end`; resume with `Last-Event-ID` or `?after=`. "
                "See docs/jobs.md."
            ),
            "tags": ["jobs"],
            "parameters": [
                {
                    "name": "job_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "format": "uuid"},
                },
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
                "403": {"description": "The key lacks the jobs scope"},
                "404": {"description": "No such job (or another tenant's)"},
            },
        }
    }
    return result
