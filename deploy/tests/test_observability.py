"""Prometheus, alert rules, Grafana and Fluent Bit configuration, checked against each other,
against the rendered manifests, and against a log line the app really writes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from deploy.tests.conftest import DEPLOY, REPO, load_yaml, of_kind, render

PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
FLUENT_BIT = DEPLOY / "fluent-bit"
LOG_FIELDS = {
    *("time", "level", "logger", "request_id", "message"),
    *("method", "path", "status", "duration_ms", "tenant"),
}


def documented_metrics() -> set[str]:
    """Metric names in the "Metrics" table of docs/deployment.md: the /metrics contract."""
    docs = (REPO / "docs" / "deployment.md").read_text()
    section = docs.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(sluice_[a-z_]+)`", section, re.MULTILINE))


def metric_names(expr: str) -> set[str]:
    """Sluice metric names an expression uses, histogram suffixes removed."""
    names = re.findall(r"\bsluice_[a-z_]+", expr)
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def balanced(expr: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for char in re.sub(r'"[^"]*"', '""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def rules() -> list[dict[str, Any]]:
    groups = load_yaml(PROMETHEUS / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_prometheus_loads_its_rules_and_scrapes_each_tier() -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS / rule_file).is_file()
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"sluice-web", "sluice-unary", "sluice-asgi", "sluice-worker"} <= jobs


def test_every_annotated_pod_is_scraped_by_exactly_one_job() -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    keep_component = {}
    for job in config["scrape_configs"]:
        for relabel in job.get("relabel_configs", []):
            label = "__meta_kubernetes_pod_label_app_kubernetes_io_component"
            if relabel["source_labels"] == [label] and relabel.get("action") == "keep":
                keep_component[job["job_name"]] = re.compile(relabel["regex"])
    for name, deployment in of_kind(render("gpu"), "Deployment").items():
        template = deployment["spec"]["template"]["metadata"]
        if template.get("annotations", {}).get("prometheus.io/scrape") != "true":
            continue
        component = template["labels"]["app.kubernetes.io/component"]
        # Prometheus anchors relabel regexes at both ends.
        jobs = [j for j, rx in keep_component.items() if rx.fullmatch(component)]
        assert len(jobs) == 1, (name, jobs)


def test_alert_rules_are_complete_and_use_documented_metrics() -> None:
    found = rules()
    names = [rule["alert"] for rule in found]
    assert len(names) == len(set(names))
    for rule in found:
        assert balanced(rule["expr"]), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"page", "warning"}
        assert rule["annotations"]["summary"]
        assert metric_names(rule["expr"]) <= documented_metrics(), rule["alert"]
    exprs = " ".join(rule["expr"] for rule in found)
    # The three the platform cannot do without: errors, backlog, readiness.
    assert 'status=~"5.."' in exprs
    assert "sluice_queue_depth" in exprs
    assert "kube_deployment_status_replicas_available" in exprs


def test_the_dashboard_queries_the_provisioned_datasource() -> None:
    (datasource,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"
    ]
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "sluice.yml")["providers"]
    assert provider["type"] == "file"
    dashboards = list((GRAFANA / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        panels = dashboard["panels"]
        assert len({p["id"] for p in panels}) == len(panels)
        exprs = []
        for panel in panels:
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
            for target in panel["targets"]:
                assert balanced(target["expr"]), panel["title"]
                assert metric_names(target["expr"]) <= documented_metrics(), panel["title"]
                exprs.append(target["expr"])
        joined = " ".join(exprs)
        for needed in ("sluice_http_requests_total", "sluice_queue_depth", "sluice_batch_size"):
            assert needed in joined
        assert "histogram_quantile(0.99, sum by (le, process) (rate(sluice_http_request" in joined


def fluent_bit_sections(path: Path) -> list[tuple[str, dict[str, str]]]:
    """Fluent Bit's classic format: [SECTION] headers, then "Key value" lines."""
    sections: list[tuple[str, dict[str, str]]] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            sections.append((line.strip("[]"), {}))
        else:
            key, _, value = line.partition(" ")
            sections[-1][1][key] = value.strip()
    return sections


def app_log_line(tmp_path: Path) -> dict[str, Any]:
    """One request through the app in a process with the production log settings; its
    stderr carries the JSON line that Fluent Bit will read."""
    code = (
        "import django; django.setup(); from django.test import Client; "
        "Client().get('/healthz', HTTP_X_REQUEST_ID='log-probe')"
    )
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "false",
        "SECRET_KEY": "deploy-tests-only-secret-key-0123456789-abcdefghij",
        "SECURE_SSL_REDIRECT": "false",
        "ALLOWED_HOSTS": "testserver",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(x) for x in result.stderr.splitlines() if x.startswith("{")]
    return next(x for x in lines if x["logger"] == "sluice.access")


def test_fluent_bit_parses_the_json_line_the_app_writes(tmp_path: Path) -> None:
    parsers = {s["Name"]: s for _, s in fluent_bit_sections(FLUENT_BIT / "parsers.conf")}
    parser = parsers["sluice_json"]
    line = app_log_line(tmp_path)
    assert set(line) == LOG_FIELDS
    assert line["request_id"] == "log-probe"
    assert parser["Format"] == "json"
    time_key, time_format = parser["Time_Key"], parser["Time_Format"]
    # Fluent Bit's %L is the fraction of a second; Python's %f reads it.
    datetime.strptime(line[time_key], time_format.replace("%L", "%f"))


def test_fluent_bit_uses_only_defined_parsers_and_real_fields() -> None:
    sections = fluent_bit_sections(FLUENT_BIT / "fluent-bit.conf")
    service = dict(sections)["SERVICE"]
    assert (FLUENT_BIT / service["Parsers_File"]).is_file()
    defined = {s["Name"] for n, s in fluent_bit_sections(FLUENT_BIT / "parsers.conf")}
    for name, section in sections:
        if name == "FILTER" and section["Name"] == "parser":
            assert section["Parser"] in defined
        if name == "FILTER" and section["Name"] == "grep":
            field = section["Exclude"].split()[0]
            assert field in LOG_FIELDS
    assert any(n == "OUTPUT" for n, _ in sections)
