"""schemathesis hooks of ``make fuzz`` (testing/fuzz.py), loaded through SCHEMATHESIS_HOOKS.

The fuzzer learns key prefixes from ``GET /v1/keys`` and tries ``DELETE /v1/keys/{prefix}``
on them: revoking the run's own key would turn every later case into a 401 and test nothing.
Every other key, those the run creates included, may be revoked.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

OWN_PREFIX = os.environ.get("SLUICE_FUZZ_OWN_PREFIX", "")


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    revokes_own_key = (
        str(case.method).upper() == "DELETE"
        and case.operation.path == "/v1/keys/{prefix}"
        and (case.path_parameters or {}).get("prefix") == OWN_PREFIX
    )
    return not revokes_own_key
