"""`make audit`: known vulnerabilities in the pinned requirements files and in the installed
environment (which adds the transitive dependencies), with pip-audit.

pip-audit asks a vulnerability service about each name and version (``--service``: PyPI's JSON
API by default, or OSV). Any known vulnerability fails the audit. A dependency the service
could not answer for is listed; when it answered for none, no vulnerability database was
reachable, and the audit fails unless ``--allow-unreachable`` is given (CI on a machine that
reaches the package index but no vulnerability service): it then says so and passes, and the
same command must be run on a connected machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any


def pip_audit(service: str, *args: str) -> dict[str, Any]:
    """pip-audit's JSON report. Its exit status is 1 when it found a vulnerability: the report
    says which, so only a missing report is an error here."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip_audit",
            "--vulnerability-service",
            service,
            "--format",
            "json",
            "--progress-spinner",
            "off",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return dict(json.loads(result.stdout))
    except json.JSONDecodeError:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"audit: pip-audit gave no report (exit {result.returncode})") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("requirements", nargs="+", help="pinned requirements files")
    parser.add_argument("--service", default="pypi", choices=["pypi", "osv"])
    parser.add_argument("--allow-unreachable", action="store_true")
    opts = parser.parse_args()

    files = [arg for path in opts.requirements for arg in ("-r", path)]
    reports = {
        "pinned requirements": pip_audit(opts.service, "--no-deps", "--disable-pip", *files),
        "installed environment": pip_audit(opts.service, "--local"),
    }
    found = skipped = audited = 0
    for what, report in reports.items():
        for dep in report["dependencies"]:
            if "skip_reason" in dep:
                skipped += 1
                print(f"audit: {what}: not audited: {dep['skip_reason']}")
                continue
            audited += 1
            for vuln in dep.get("vulns", []):
                found += 1
                fixes = ", ".join(vuln.get("fix_versions", [])) or "none yet"
                name = f"{dep['name']} {dep['version']}"
                print(f"audit: {what}: {name}: {vuln['id']} (fixed in {fixes})")
    print(f"audit: {audited} dependencies audited, {skipped} not, {found} known vulnerabilities")
    if found:
        return 1
    if audited == 0:
        print(
            f"audit: no vulnerability database answered (service {opts.service!r}); run "
            "`make audit` on a machine that reaches it",
            file=sys.stderr,
        )
        return 0 if opts.allow_unreachable else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
