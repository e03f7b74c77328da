"""A bounded ``make fuzz`` in the suite: schemathesis over every operation of ``/api/schema/``
against the production shape (gunicorn and a Celery worker on PostgreSQL + Redis, where a NUL
breaks a COPY into jsonb), with a valid key: no answer may be a 5xx. About 90 s; ``make fuzz``
runs 50 examples per operation, on the embedded default too when no services answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from testing import fuzz

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.redis,
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (PostgreSQL + Redis pass)"),
    pytest.mark.timeout(600),  # about 90 s; a loaded machine may take a few times that
]

EXAMPLES = 20  # per operation in the fuzzing phase; the coverage and stateful phases add more


def test_no_generated_request_gets_a_server_error(tmp_path: Path) -> None:
    result = fuzz.run(examples=EXAMPLES, seed_value=1, workdir=tmp_path)
    assert result.operations == result.total > 30, result.output[-3000:]
    assert result.returncode == 0, result.output[-6000:]
    assert result.generated >= EXAMPLES * result.operations, result.output[-3000:]
    assert result.passed == result.generated
