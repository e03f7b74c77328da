"""A model's canary policy: its shape, its defaults and the bounds of each figure (an
operator's mistake is a :class:`PolicyError`). Judging a canary against it is
:mod:`inference.catalog.canary`'s."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

# How far back per-version health reaches (inference.catalog.version_health), so the longest
# window a canary policy may judge.
HEALTH_RETENTION_SECONDS = 3600


class PolicyError(ValueError):
    """The policy is malformed (an operator's mistake)."""


@dataclass(frozen=True)
class Policy:
    window_seconds: int = 60
    min_requests: int = 20
    max_error_rate_increase: float = 0.05
    max_p99_ratio: float | None = 2.0  # None: latency is not judged

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def policy_parse(raw: Any) -> Policy | None:
    """The policy a model declares (missing keys take their defaults), or None when it
    declares none; PolicyError when it is malformed."""
    if raw in (None, {}):
        return None
    if not isinstance(raw, dict):
        raise PolicyError("a canary policy is an object")
    unknown = sorted(set(raw) - set(Policy.__dataclass_fields__))
    if unknown:
        raise PolicyError(f"unknown canary policy key(s) {unknown}")
    policy = Policy(**raw)
    checks = (
        (policy.window_seconds, int, 5, HEALTH_RETENTION_SECONDS, "window_seconds"),
        (policy.min_requests, int, 1, 1_000_000, "min_requests"),
        (policy.max_error_rate_increase, float, 0.0, 1.0, "max_error_rate_increase"),
    )
    for value, kind, low, high, name in checks:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PolicyError(f"{name} must be a number")
        if kind is int and int(value) != value:
            raise PolicyError(f"{name} must be a whole number")
        if not low <= value <= high:
            raise PolicyError(f"{name} must be within {low}..{high}")
    ratio = policy.max_p99_ratio
    if ratio is not None and (
        isinstance(ratio, bool)
        or not isinstance(ratio, (int, float))
        or not math.isfinite(ratio)
        or ratio < 1
    ):
        raise PolicyError("max_p99_ratio must be a number of at least 1 (or null)")
    return policy
