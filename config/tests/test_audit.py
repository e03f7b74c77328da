"""`make audit` (scripts/audit.py): what fails the audit, with a stand-in for pip-audit that
answers as the real one does (its JSON report), so no vulnerability service is needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def audit(tmp_path: Path, report: dict[str, Any], *flags: str) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "pip_audit"
    fake.mkdir(exist_ok=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(f"print({json.dumps(json.dumps(report))})\n")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("django==5.2.19\n")
    return subprocess.run(
        [sys.executable, "scripts/audit.py", *flags, str(requirements)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_it_fails_on_a_known_vulnerability(tmp_path):
    vuln = {"id": "PYSEC-0000-1", "fix_versions": ["5.2.20"], "aliases": [], "description": ""}
    report = {"dependencies": [{"name": "django", "version": "5.2.19", "vulns": [vuln]}]}
    result = audit(tmp_path, report, "--allow-unreachable")
    assert result.returncode == 1
    assert "django 5.2.19: PYSEC-0000-1 (fixed in 5.2.20)" in result.stdout


def test_it_passes_when_every_dependency_was_audited_clean(tmp_path):
    report = {"dependencies": [{"name": "django", "version": "5.2.19", "vulns": []}]}
    result = audit(tmp_path, report)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 known vulnerabilities" in result.stdout


def test_it_says_when_no_vulnerability_database_answered(tmp_path):
    skipped = {"name": "django", "skip_reason": "Dependency not found on PyPI and could not be"}
    report = {"dependencies": [skipped]}
    strict = audit(tmp_path, report)
    assert strict.returncode == 2
    assert "no vulnerability database answered" in strict.stderr
    # CI on a machine without a vulnerability service: said, not failed.
    lenient = audit(tmp_path, report, "--allow-unreachable")
    assert lenient.returncode == 0
    assert "no vulnerability database answered" in lenient.stderr
