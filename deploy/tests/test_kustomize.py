"""The Kubernetes overlays render (kubectl kustomize, offline) into safe, consistent objects."""

from __future__ import annotations

import uuid
from typing import Any

import kubernetes_validate
import pytest
import redis
from django.conf import settings

from config.celery import app as celery_app
from deploy.tests.conftest import (
    DEPLOY,
    NON_SETTINGS_VARIABLES,
    OVERLAYS,
    load_yaml,
    of_kind,
    render,
    settings_variables,
)
from inference.transport.lane import lane_key

HTTP_TIERS = ("sluice-web", "sluice-unary", "sluice-asgi")
# The oldest Kubernetes still commonly run; every field used here exists there.
KUBERNETES_VERSION = "1.30"
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = of_kind(objects, "Deployment") | of_kind(objects, "Job")
    return {name: obj["spec"]["template"]["spec"] for name, obj in found.items()}


def container(objects: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    (only,) = of_kind(objects, "Deployment")[deployment]["spec"]["template"]["spec"]["containers"]
    return only


def config(objects: list[dict[str, Any]]) -> dict[str, str]:
    (cm,) = of_kind(objects, "ConfigMap").values()
    return cm["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_it_renders_every_process(overlay: str) -> None:
    deployments = set(of_kind(render(overlay), "Deployment"))
    expected = {
        "sluice-web",
        "sluice-asgi",
        "sluice-static",
        "sluice-worker-cpu",
        "sluice-worker-jobs",
        "sluice-beat",
    }
    assert expected <= deployments
    assert "sluice-migrate" in of_kind(render(overlay), "Job")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_matches_the_kubernetes_schema(overlay: str) -> None:
    """Kubernetes' OpenAPI schemas, strict: an unknown (misspelt) field is an error."""
    errors = []
    for obj in render(overlay):
        if obj["kind"] in KEDA_KINDS:
            continue  # a CRD: checked in test_keda_objects_are_well_formed
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    assert errors == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_objects_are_well_formed(overlay: str) -> None:
    objects = render(overlay)
    for scaled in of_kind(objects, "ScaledObject").values():
        assert scaled["apiVersion"] == "keda.sh/v1alpha1"
        spec = scaled["spec"]
        assert isinstance(spec["minReplicaCount"], int)
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
        for trigger in spec["triggers"]:
            # KEDA reads trigger metadata as a map of strings; a bare number is rejected.
            assert all(isinstance(v, str) for v in trigger["metadata"].values()), trigger
            assert {"listName", "listLength"} <= set(trigger["metadata"])
    for auth in of_kind(objects, "TriggerAuthentication").values():
        assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} <= {
            "address",
            "host",
            "port",
            "username",
            "password",
        }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_as_non_root_with_a_read_only_root(overlay: str) -> None:
    for name, spec in pod_specs(render(overlay)).items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] > 0, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        for c in spec["containers"]:
            security = c["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"]["drop"] == ["ALL"], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(overlay: str) -> None:
    for name, spec in pod_specs(render(overlay)).items():
        for c in spec["containers"]:
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][bound]), (name, bound)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_long_running_container_has_a_liveness_probe(overlay: str) -> None:
    for name, obj in of_kind(render(overlay), "Deployment").items():
        if name == "sluice-beat":
            continue  # nothing to ask; the container exits if beat dies (see beat.yaml)
        for c in obj["spec"]["template"]["spec"]["containers"]:
            assert "livenessProbe" in c, name


@pytest.mark.parametrize("name", HTTP_TIERS)
def test_http_tiers_probe_healthz_for_liveness_and_readyz_for_readiness(name: str) -> None:
    c = container(render("production"), name)
    ports = {p["name"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["port"] in ports
    # Probes call the pod by its IP: ALLOWED_HOSTS must include it, or Django answers 400.
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert "$(POD_IP)" in env["ALLOWED_HOSTS"]["value"].split(",")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_by_the_overlay(overlay: str) -> None:
    for name, spec in pod_specs(render(overlay)).items():
        for c in spec["containers"]:
            repository, _, tag = c["image"].rpartition(":")
            assert repository and tag and tag != "latest", (name, c["image"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_and_web_use_their_own_images(overlay: str) -> None:
    for name, spec in pod_specs(render(overlay)).items():
        image = spec["containers"][0]["image"].rsplit("/", 1)[-1]
        if name.startswith("sluice-worker-"):
            assert image.startswith("sluice-worker:"), name
        elif name != "sluice-static":
            assert image.startswith("sluice:"), name


def test_services_select_their_deployments_and_ingresses_reach_services() -> None:
    objects = render("production")
    deployments = of_kind(objects, "Deployment")
    services = of_kind(objects, "Service")
    for name, service in services.items():
        selector = service["spec"]["selector"]
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
        ports = {
            p["name"]
            for p in deployments[name]["spec"]["template"]["spec"]["containers"][0]["ports"]
        }
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, name
    for ingress in of_kind(objects, "Ingress").values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service_ports = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
                assert backend["port"]["name"] in service_ports


def ingress_routes(objects: list[dict[str, Any]]) -> dict[str, tuple[str, dict[str, str]]]:
    routes = {}
    for ingress in of_kind(objects, "Ingress").values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                annotations = ingress["metadata"]["annotations"]
                routes[path["path"]] = (path["backend"]["service"]["name"], annotations)
    return routes


def test_streams_websockets_and_unary_inference_reach_their_servers_unbuffered() -> None:
    routes = ingress_routes(render("production"))
    assert routes["/"][0] == "sluice-web"
    assert routes["/static/"][0] == "sluice-static"
    for path in ("/ws/", "/v1/streams/", "/.+/events$", "/v1/models/[^/]+/infer$"):
        service, annotations = routes[path]
        assert service == ("sluice-unary" if "infer" in path else "sluice-asgi"), path
        assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
        assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600


def test_ingress_serves_the_public_host() -> None:
    objects = render("production")
    host = config(objects)["PUBLIC_HOST"]
    for ingress in of_kind(objects, "Ingress").values():
        assert [r["host"] for r in ingress["spec"]["rules"]] == [host]
        assert ingress["spec"]["tls"][0]["hosts"] == [host]


def test_web_and_asgi_scale_on_cpu() -> None:
    objects = render("production")
    hpas = of_kind(objects, "HorizontalPodAutoscaler")
    deployments = of_kind(objects, "Deployment")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == set(HTTP_TIERS)
    for name in HTTP_TIERS:
        # An autoscaled Deployment must not pin replicas, or every apply resets the count.
        assert "replicas" not in deployments[name]["spec"], name
        assert hpas[name]["spec"]["minReplicas"] >= 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_watches_the_redis_list_of_every_queue_a_worker_consumes(overlay: str) -> None:
    objects = render(overlay)
    prefix = config(objects)["REDIS_KEY_PREFIX"]
    scaled = {
        s["spec"]["scaleTargetRef"]["name"]: s for s in of_kind(objects, "ScaledObject").values()
    }
    auth = set(of_kind(objects, "TriggerAuthentication"))
    workers = {n for n in of_kind(objects, "Deployment") if n.startswith("sluice-worker-")}
    assert set(scaled) == workers
    for name in workers:
        command = container(objects, name)["command"]
        queues = command[command.index("--queues") + 1].split(",")
        triggers = scaled[name]["spec"]["triggers"]
        # config/settings.py: global_keyprefix "<REDIS_KEY_PREFIX>:celery:" + queue name; an
        # inference queue's unary batches wait on its batch lane
        # (inference.transport.lane.lane_key).
        lanes = [q for q in queues if q in settings.INFERENCE_QUEUES]
        assert sorted(t["metadata"]["listName"] for t in triggers) == sorted(
            [f"{prefix}:celery:{q}" for q in queues]
            + [f"{prefix}:inference:lane:{q}" for q in lanes]
        )
        assert all(
            t["type"] == "redis" and t["authenticationRef"]["name"] in auth for t in triggers
        )


def test_the_gpu_overlay_adds_a_gpu_pool_on_gpu_nodes() -> None:
    objects = render("gpu")
    spec = of_kind(objects, "Deployment")["sluice-worker-gpu"]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["command"][c["command"].index("--queues") + 1] == "gpu"
    assert spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert "sluice-worker-gpu" not in of_kind(render("production"), "Deployment")


def test_beat_never_runs_twice() -> None:
    beat = of_kind(render("production"), "Deployment")["sluice-beat"]["spec"]
    assert beat["replicas"] == 1
    assert beat["strategy"]["type"] == "Recreate"


def test_production_namespace_enforces_the_restricted_pod_standard() -> None:
    objects = render("production")
    (namespace,) = of_kind(objects, "Namespace").values()
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {
        namespace["metadata"]["name"]
    }


def test_manifests_set_only_variables_something_reads() -> None:
    objects = render("gpu")
    known = settings_variables() | set(NON_SETTINGS_VARIABLES)
    names = set(config(objects))
    for spec in pod_specs(objects).values():
        for c in spec["containers"]:
            names |= {e["name"] for e in c.get("env", [])}
    assert names - known == set()


def test_the_secret_is_an_example_with_placeholders_only() -> None:
    example = load_yaml(DEPLOY / "k8s" / "base" / "secret.example.yaml")
    kubernetes_validate.validate(example, KUBERNETES_VERSION, strict=True)
    assert "Secret" not in {o["kind"] for o in render("production")}
    values = example["stringData"]
    for key in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "JWT_SIGNING_KEYS", "REDIS_PASSWORD"):
        assert "CHANGE-ME" in values[key], key
    # Every key the manifests read from the Secret is in the example.
    auth = of_kind(render("production"), "TriggerAuthentication")["sluice-redis"]
    assert {r["key"] for r in auth["spec"]["secretTargetRef"]} <= set(values)
    assert set(values) - set(NON_SETTINGS_VARIABLES) <= settings_variables()


@pytest.mark.redis
def test_a_queued_task_lands_in_the_list_keda_watches() -> None:
    """The list name KEDA reads, with this run's prefix and a queue of its own, is where
    Celery really puts a task for that queue."""
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL: the broker is Redis only then")
    objects = render("production")
    trigger = of_kind(objects, "ScaledObject")["sluice-worker-jobs"]["spec"]["triggers"][0]
    deployed_prefix = config(objects)["REDIS_KEY_PREFIX"]
    queue = f"keda-probe-{uuid.uuid4().hex[:8]}"
    list_name = trigger["metadata"]["listName"].replace(deployed_prefix, settings.REDIS_KEY_PREFIX)
    key = list_name.removesuffix(":jobs") + f":{queue}"
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        celery_app.send_task("deploy.keda_probe", queue=queue)
        assert client.llen(key) == 1
    finally:
        client.delete(key)
        client.close()


def test_the_lane_list_keda_watches_is_where_web_processes_push_batches() -> None:
    objects = render("gpu")
    deployed_prefix = config(objects)["REDIS_KEY_PREFIX"]
    watched = {
        t["metadata"]["listName"].replace(deployed_prefix, settings.REDIS_KEY_PREFIX, 1)
        for s in of_kind(objects, "ScaledObject").values()
        for t in s["spec"]["triggers"]
    }
    assert {lane_key("cpu"), lane_key("gpu")} <= watched
