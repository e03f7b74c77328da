"""Every YAML file parses; docker-compose.yml is valid compose and wires its services right."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from deploy.tests.conftest import (
    COMPOSE_FILE,
    DEPLOY,
    NON_SETTINGS_VARIABLES,
    REPO,
    compose,
    settings_variables,
)

YAML_FILES = sorted([COMPOSE_FILE, *DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
APP_SERVICES = ("web", "unary", "asgi", "worker-cpu", "worker-jobs", "beat")


def compose_schema() -> dict[str, Any]:
    """The compose-spec JSON schema as vendored (and pinned) by check-jsonschema."""
    schema = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(schema.read_text())


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_it_parses_every_yaml_file(path: Path) -> None:
    with path.open() as f:
        documents = [d for d in yaml.safe_load_all(f) if d is not None]
    assert documents, f"{path} holds no document"
    assert all(isinstance(d, dict) for d in documents)


def test_compose_file_follows_the_compose_spec() -> None:
    assert schema_errors(compose()) == []


def test_the_compose_schema_rejects_a_misspelt_condition() -> None:
    # Proves the schema is really applied: a typo a human could make must not pass.
    broken = compose()
    broken["services"]["web"]["depends_on"]["migrate"]["condition"] = "service_completed"
    assert schema_errors(broken)


def test_it_runs_every_process_of_the_design() -> None:
    services = set(compose()["services"])
    expected = {"postgres", "redis", "migrate", "nginx", "static", *APP_SERVICES}
    assert expected <= services


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_start_after_migrations_on_healthy_stores(name: str) -> None:
    depends = compose()["services"][name]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_every_service_waited_on_as_healthy_has_a_health_check() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for target, rule in service.get("depends_on", {}).items():
            if rule["condition"] == "service_healthy":
                check = services[target].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), (name, target)


def test_only_nginx_publishes_ports() -> None:
    published = {n for n, s in compose()["services"].items() if s.get("ports")}
    assert published == {"nginx"}


def test_app_services_share_one_environment_with_one_trusted_proxy() -> None:
    services = compose()["services"]
    envs = [services[name]["environment"] for name in (*APP_SERVICES, "migrate")]
    for env in envs:
        assert env["TRUSTED_PROXY_COUNT"] == "1"
        assert env["DEBUG"] == "false"
        assert "SECRET_KEY" in env and "DATABASE_URL" in env and "REDIS_URL" in env


def test_compose_sets_only_variables_something_reads() -> None:
    known = settings_variables() | set(NON_SETTINGS_VARIABLES)
    for name in (*APP_SERVICES, "migrate"):
        unknown = set(compose()["services"][name]["environment"]) - known
        assert not unknown, f"{name} sets variables nothing reads: {unknown}"


def test_every_compose_variable_is_documented() -> None:
    text = COMPOSE_FILE.read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    docs = (REPO / "docs" / "deployment.md").read_text()
    undocumented = {v for v in used if f"`{v}`" not in docs}
    assert not undocumented
