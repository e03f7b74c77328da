"""The PostgreSQL connection budget: what every process of docker-compose.yml (and of the
Kubernetes production overlay) can hold at most, from its command and environment, fits a
default PostgreSQL (``max_connections = 100``) in compose, and is the figure
docs/deployment.md gives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from deploy.tests.conftest import REPO, compose, compose_default, of_kind, render
from deploy.tests.test_entrypoints import option

MAX_CONNECTIONS = 100  # PostgreSQL's default
RESERVED = 3  # its superuser_reserved_connections: not for the application
DOCS = (REPO / "docs" / "deployment.md").read_text()
SECTION = DOCS.split("## PostgreSQL connections", 1)[1].split("\n## ", 1)[0]


def connections(cmd: list[str], env: Mapping[str, str]) -> int:
    """The most connections one container running ``cmd`` holds. A process with a pool holds
    at most its pool; one without keeps a connection per thread that queries, so every
    threaded process must have a pool, and a forking one (prefork) must not."""
    pool = int(env.get("DATABASE_POOL_MAX_SIZE", "0"))
    processes = int(env.get("WEB_CONCURRENCY", "1"))
    if cmd[0] in ("gunicorn", "uvicorn"):
        assert pool > 0, f"{cmd[0]} runs threads (or one per request) without a pool"
        return processes * pool
    if cmd[1:3] == ["manage.py", "serve"]:
        assert pool > 0, "daphne runs each request's sync code on a thread of its own"
        return pool
    if cmd[1:3] == ["manage.py", "migrate"]:
        return 1
    assert cmd[:3] == ["celery", "-A", "config"], cmd
    if cmd[3] == "beat":
        return 1
    concurrency = int(option(cmd, "--concurrency") or "1")
    if option(cmd, "--pool", "-P") == "threads":
        assert pool > 0, "a threads-pool worker without a connection pool"
        return pool
    assert pool == 0, "a pool does not survive prefork's fork"
    return concurrency + 1  # each child, and the parent


def compose_budget() -> dict[str, int]:
    budget = {}
    for name, service in compose()["services"].items():
        if "sluice" not in str(service.get("image", "")):
            continue  # postgres, redis, nginx
        if name == "static":
            continue  # nginx serving files
        cmd = [compose_default(str(arg)) for arg in service["command"]]
        env = {k: compose_default(str(v)) for k, v in service["environment"].items()}
        budget[name] = connections(cmd, env)
    return budget


def test_every_process_of_compose_together_fits_a_default_postgresql() -> None:
    budget = compose_budget()
    assert set(budget) == {
        "migrate",
        "web",
        "unary",
        "asgi",
        "worker-cpu",
        "worker-jobs",
        "beat",
    }
    total = sum(budget.values())
    assert total <= MAX_CONNECTIONS - RESERVED, budget
    # docs/deployment.md scales worker-cpu to three: that still fits.
    assert total + 2 * budget["worker-cpu"] <= MAX_CONNECTIONS - RESERVED
    assert f"**{total}**" in SECTION, f"docs/deployment.md should give the total, {total}"
    for name, held in budget.items():
        assert f"| {name} | " in SECTION and f" | {held} |" in SECTION, name


def _pod_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def test_kubernetes_budget_at_the_autoscalers_bounds_is_the_documented_one() -> None:
    objects = render("production")
    bounds: dict[str, tuple[int, int]] = {}
    for hpa in of_kind(objects, "HorizontalPodAutoscaler").values():
        spec = hpa["spec"]
        bounds[spec["scaleTargetRef"]["name"]] = (spec["minReplicas"], spec["maxReplicas"])
    for scaled in of_kind(objects, "ScaledObject").values():
        spec = scaled["spec"]
        bounds[spec["scaleTargetRef"]["name"]] = (
            spec.get("minReplicaCount", 0),
            spec["maxReplicaCount"],
        )
    low = high = 0
    workloads = {**of_kind(objects, "Deployment"), **of_kind(objects, "Job")}
    for name, workload in workloads.items():
        container = workload["spec"]["template"]["spec"]["containers"][0]
        if "command" not in container:
            continue  # the static files' nginx
        per_pod = connections(container["command"], _pod_env(container))
        replicas = workload["spec"].get("replicas", 1)
        least, most = bounds.get(name, (replicas, replicas))
        low += least * per_pod
        high += most * per_pod
    if low > MAX_CONNECTIONS - RESERVED:
        pytest.fail(f"the production overlay's minimum needs {low} connections")
    assert f"**{low}**" in SECTION and f"**{high}**" in SECTION, (low, high)
