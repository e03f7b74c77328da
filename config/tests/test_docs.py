"""The README's configuration table is the one list of settings: keep it complete."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _read_by_settings() -> set[str]:
    source = (ROOT / "config" / "settings.py").read_text()
    return set(re.findall(r'env(?:\.\w+)?\(\s*"([A-Z][A-Z0-9_]+)"', source))


def _documented() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return {
        name
        for row in table.splitlines()
        if row.startswith("| `")
        for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])
    }


def test_every_setting_read_from_the_environment_is_in_the_readme():
    read = _read_by_settings()
    assert len(read) > 20, "the settings scan found too little: fix the pattern"
    assert read - _documented() == set()


def test_every_problem_type_is_documented():
    slugs = set()
    for path in ROOT.glob("*/**/*.py"):
        rel = path.relative_to(ROOT).parts
        if rel[0].startswith(".") or "tests" in rel:  # virtualenvs (.venv, .venv-3.13), caches
            continue
        source = path.read_text()
        slugs |= set(re.findall(r'problem_slug = "([a-z-]+)"', source))
        slugs |= set(re.findall(r'slug="([a-z-]+)"', source))
    errors = (ROOT / "docs" / "errors.md").read_text()
    documented = set(re.findall(r"\| `([a-z-]+)`", errors))
    assert "rate-limited" in slugs, "the scan found too little: fix the pattern"
    assert slugs - documented == set()
