"""Every command the deployment runs names a real entry point of this project, and the
compose, Kubernetes and Makefile versions of each process agree."""

from __future__ import annotations

import importlib
import re
import shlex
from typing import Any

import pytest
from celery import Celery
from celery.app.utils import find_app
from django.core.management import get_commands

from deploy.tests.conftest import (
    OVERLAYS,
    REPO,
    compose,
    compose_default,
    of_kind,
    render,
)

# Queues some worker pool consumes; a task routed elsewhere would wait forever.
KNOWN_QUEUES = {"celery", "cpu", "jobs", "gpu"}
# compose service -> Makefile target that runs the same process.
MAKE_TARGETS = {
    "web": "web",
    "unary": "unary",
    "asgi": "asgi",
    "worker-cpu": "worker",
    "worker-jobs": "worker-jobs",
    "beat": "beat",
}


def option(cmd: list[str], *names: str) -> str | None:
    for i, arg in enumerate(cmd):
        if arg in names:
            # a flag without a value (--no-proxy-headers, --no-worker) has none to return
            return cmd[i + 1] if arg in TAKES_VALUE and i + 1 < len(cmd) else None
    return None


# Options of gunicorn, daphne and celery that take a value (the next argument).
TAKES_VALUE = {
    *("--config", "-c", "--bind", "-b", "--port", "-p", "--app", "-A", "--loglevel", "-l"),
    *("--queues", "-Q", "--pool", "-P", "--concurrency", "--schedule", "-s", "--hostname"),
    *("--timeout", "--destination", "-d", "--workers", "-w"),
    *("--host", "--http", "--loop", "--lifespan"),
}


def positionals(cmd: list[str]) -> list[str]:
    found, skip = [], False
    for arg in cmd[1:]:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in TAKES_VALUE
        else:
            found.append(arg)
    return found


def entry_point(cmd: list[str]) -> str:
    """What a command runs: the WSGI/ASGI application, or the Celery app and subcommand."""
    if cmd[0] == "celery":
        return f"{option(cmd, '-A', '--app')} {positionals(cmd)[0]}"
    return positionals(cmd)[0]


def check_command(cmd: list[str]) -> None:
    """Fail unless ``cmd`` runs something that exists in this repository."""
    name = cmd[0]
    if name == "sh" and cmd[1] == "-c":
        check_command(shlex.split(cmd[2]))
    elif name == "gunicorn":
        (app,) = positionals(cmd)
        module, _, attr = app.partition(":")
        assert callable(getattr(importlib.import_module(module), attr or "application"))
        conf = option(cmd, "--config", "-c")
        assert conf and (REPO / conf).is_file(), f"gunicorn config {conf} does not exist"
    elif name == "uvicorn":
        (app,) = positionals(cmd)
        module, _, attr = app.partition(":")
        assert callable(getattr(importlib.import_module(module), attr))
        assert option(cmd, "--http") == "httptools" and option(cmd, "--loop") == "uvloop"
    elif name == "daphne":
        (app,) = positionals(cmd)
        module, _, attr = app.partition(":")
        assert callable(getattr(importlib.import_module(module), attr))
    elif name == "celery":
        assert isinstance(find_app(option(cmd, "-A", "--app")), Celery)
        subcommand = positionals(cmd)[0]
        assert subcommand in {"worker", "beat", "inspect"}, subcommand
        if subcommand == "worker":
            queues = set(option(cmd, "--queues", "-Q").split(","))
            assert queues <= KNOWN_QUEUES, queues - KNOWN_QUEUES
    elif name == "python":
        assert cmd[1] == "manage.py" and (REPO / "manage.py").is_file()
        assert cmd[2] in get_commands(), f"no manage.py command {cmd[2]}"
    else:
        pytest.fail(f"unexpected program {name!r} in {cmd}")


def compose_commands() -> dict[str, list[str]]:
    services = compose()["services"]
    return {
        name: [compose_default(str(a)) for a in s["command"]]
        for name, s in services.items()
        if "build" in s and "command" in s
    }


def k8s_containers(overlay: str) -> dict[str, dict[str, Any]]:
    found = {}
    for kind in ("Deployment", "Job"):
        for name, obj in of_kind(render(overlay), kind).items():
            for container in obj["spec"]["template"]["spec"]["containers"]:
                found[f"{name}/{container['name']}"] = container
    return found


@pytest.mark.parametrize("service", sorted(compose_commands()))
def test_compose_commands_run_real_entry_points(service: str) -> None:
    check_command(compose_commands()[service])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_commands_run_real_entry_points(overlay: str) -> None:
    for name, container in k8s_containers(overlay).items():
        if container["image"].split("/")[-1].startswith("sluice-static"):
            continue  # nginx's own command
        assert "command" in container, name
        check_command(container["command"])
        probe = container.get("livenessProbe", {}).get("exec")
        if probe:
            check_command(probe["command"])


def test_kubernetes_runs_the_compose_commands() -> None:
    commands = compose_commands()
    containers = k8s_containers("production")
    pairs = {
        "web": "sluice-web/web",
        "asgi": "sluice-asgi/asgi",
        "worker-cpu": "sluice-worker-cpu/worker",
        "worker-jobs": "sluice-worker-jobs/worker",
        "beat": "sluice-beat/beat",
        "migrate": "sluice-migrate/migrate",
    }
    for service, container in pairs.items():
        assert containers[container]["command"] == commands[service], service


def test_kubernetes_worker_probe_is_the_compose_health_check() -> None:
    compose_check = compose()["services"]["worker-cpu"]["healthcheck"]["test"][1]
    for name, container in k8s_containers("gpu").items():
        if name.startswith("sluice-worker-"):
            probe = container["livenessProbe"]["exec"]["command"]
            assert probe == ["sh", "-c", compose_check.replace("$$", "$")], name


def makefile_recipe(target: str) -> list[str]:
    text = (REPO / "Makefile").read_text()
    match = re.search(rf"^{target}:[^\n]*\n\t([^\n]+)", text, re.MULTILINE)
    assert match, f"no Makefile target {target}"
    recipe = match.group(1).replace("$(VENV)/bin/", "").replace("$(PORT)", "8000")
    return shlex.split(recipe)


@pytest.mark.parametrize("service", sorted(MAKE_TARGETS))
def test_compose_runs_what_the_makefile_runs(service: str) -> None:
    """Same program and entry point, every Makefile option present, and fixed values equal
    (a value built from a variable, like the queue list, may differ)."""
    make = makefile_recipe(MAKE_TARGETS[service])
    ours = compose_commands()[service]
    assert ours[0] == make[0]
    assert entry_point(ours) == entry_point(make)
    flags = {a for a in make if a.startswith("-")}
    assert flags <= set(ours), flags - set(ours)
    for flag in flags:
        expected = option(make, flag)
        if expected and not expected.startswith("-") and "$" not in expected:
            assert option(ours, flag) == expected, (service, flag)
