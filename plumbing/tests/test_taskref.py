from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_a_task_is_found_by_name_in_a_process_that_imported_no_tasks_module() -> None:
    """A web process sends tasks it never imported: the apps' tasks modules load on demand."""
    code = (
        "import django; django.setup()\n"
        "import sys\n"
        "assert 'inference.tasks' not in sys.modules and 'jobs.tasks' not in sys.modules\n"
        "from plumbing.taskref import task_named\n"
        "print(task_named('inference_predict_batch').name, task_named('jobs_run_chunk').name)\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "DEBUG": "true"}
    env.pop("REDIS_URL", None)
    env.pop("DATABASE_URL", None)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["inference_predict_batch", "jobs_run_chunk"]


def test_an_unknown_name_is_refused() -> None:
    from celery.exceptions import NotRegistered

    from plumbing.taskref import task_named

    with pytest.raises(NotRegistered):
        task_named("no_such_task")
