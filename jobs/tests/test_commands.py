from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from jobs.models import Job, TaskStatus
from tenants.models import Tenant

pytestmark = pytest.mark.django_db


def _run(run_jobs: Any, *args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    run_jobs(lambda: call_command(*args, stdout=out, stderr=err))
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db(transaction=True)  # on_commit runs at once, as in a real command
def test_submitjob_follows_to_the_end(
    tmp_path: Path, tenant: Tenant, doubler: Any, run_jobs: Any
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps({"x": i}) for i in range(12)))
    out, err = _run(
        run_jobs,
        "submitjob",
        str(source),
        "--model",
        "doubler",
        "--tenant",
        tenant.slug,
        "--chunk-size",
        "5",
        "--follow",
    )
    job = Job.objects.get(pk=out.strip())
    assert (job.status, job.succeeded, job.chunks) == ("succeeded", 12, 3)
    assert "12/12" in err  # the progress bar's last state
    assert f"job {job.pk} succeeded: 12 succeeded" in err


def test_submitjob_reads_csv_and_refuses_bad_files(
    tmp_path: Path, tenant: Tenant, doubler: Any, run_jobs: Any
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("x\n1\n2\n")
    out, _ = _run(run_jobs, "submitjob", str(source), "--model", "doubler", "--tenant", "acme")
    assert Job.objects.get(pk=out.strip()).total == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(CommandError, match="line 1"):
        call_command("submitjob", str(bad), "--model", "doubler", "--tenant", "acme")
    with pytest.raises(CommandError, match="No model"):
        call_command("submitjob", str(source), "--model", "nope", "--tenant", "acme")


def test_jobstatus_and_replaydead(
    tmp_path: Path, tenant: Tenant, broken: Any, run_jobs: Any
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"x": 1}\n{"x": 2}\n')
    out, _ = _run(
        run_jobs,
        "submitjob",
        str(source),
        "--model",
        "broken",
        "--tenant",
        "acme",
        "--max-attempts",
        "2",
    )
    job_id = out.strip()
    status, _ = _run(run_jobs, "jobstatus", job_id)
    assert "failed" in status and "2/2 (100.0%)" in status
    assert "dead x2: engine error: the model failed on this input" in status
    first = Job.objects.get(pk=job_id).tasks.order_by("index").first()
    assert first is not None
    replayed, _ = _run(run_jobs, "replaydead", job_id, "--task", str(first.pk))
    assert replayed.startswith("1 dead tasks")
    first.refresh_from_db()
    assert (first.status, first.attempts) == (TaskStatus.DEAD, 2)
    with pytest.raises(CommandError):
        call_command("jobstatus", "not-a-job")
