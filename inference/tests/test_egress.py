"""The remote runtimes' egress allow-list: which upstream URLs are refused at registration (API
of the registry, ``registermodel``, the admin), when stored options are parsed, and at connect
time against the address actually resolved (DNS rebinding)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from inference.models import Model, ModelVersion
from inference.registry.services import version_register
from inference.runtimes import egress, runtime_class
from inference.runtimes.base import UpstreamUnavailable, VersionSpec
from inference.tests.fakes import X_SCHEMA
from inference.tests.upstream_server import FakeUpstream, fake_upstream
from plumbing.metrics import UPSTREAM_CALLS

pytestmark = pytest.mark.django_db

INFER = "/v2/models/model/infer"

# Every kind of address a registry entry could use to reach inside the deployment.
REFUSED = [
    ("http://127.0.0.1:8080", "loopback"),
    ("http://localhost:8080", "loopback"),  # a name: refused for what it resolves to
    ("http://169.254.169.254/latest/meta-data", "link-local"),  # the cloud's metadata service
    ("http://10.0.0.5:8000", "private"),
    ("http://172.16.3.4", "private"),
    ("http://192.168.1.10:8001/v1", "private"),
    ("http://100.64.0.1", "not globally routable"),  # shared address space (CGNAT)
    ("http://0.0.0.0:80", "unspecified"),
    ("http://224.0.0.1", "multicast"),
    ("http://[::1]:8080", "loopback"),
    ("http://[fe80::1]", "link-local"),
    ("http://[fd00::1]", "private"),
    ("http://[::ffff:169.254.169.254]", "link-local"),  # IPv4-mapped
    ("http://[64:ff9b::a9fe:a9fe]", "link-local"),  # NAT64 of 169.254.169.254
    ("http://[2002:a00:1::1]", "private"),  # 6to4 of 10.0.0.1
    ("http://2130706433", "loopback"),  # 127.0.0.1 as one number
    ("http://0x7f.1", "loopback"),
    ("http://0251.0376.0251.0376", "link-local"),  # 169.254.169.254 in octal
]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with fake_upstream() as server:
        yield server


def _register(url: str, runtime: str = ModelVersion.Runtime.KSERVE) -> ModelVersion:
    return version_register(
        model_name="remote",
        version="1",
        runtime=runtime,
        runtime_options={"url": url, "model": "model"},
        input_schema=X_SCHEMA,
        actor="test",
    )


def _spec(url: str, **options: Any) -> VersionSpec:
    return VersionSpec(
        id=7, model="model", version="1", runtime="kserve", options={"url": url, **options}
    )


@pytest.mark.parametrize(("url", "kind"), REFUSED)
@pytest.mark.parametrize("runtime", [ModelVersion.Runtime.KSERVE, ModelVersion.Runtime.OPENAI])
def test_it_refuses_to_register_an_upstream_inside_the_deployment(
    url: str, kind: str, runtime: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        _register(url, runtime)
    [message] = refused.value.message_dict["runtime_options"]
    assert kind in message and "INFERENCE_REMOTE_ALLOWED_NETWORKS" in message
    assert not ModelVersion.objects.exists()


def test_it_registers_public_and_unresolvable_upstreams() -> None:
    assert _register("https://93.184.216.34/v2").pk  # a public address
    # A name only the workers' resolver may know: the connect-time check decides there.
    ModelVersion.objects.all().delete()
    assert _register("http://triton.invalid:8000").pk


def test_networks_it_is_told_to_allow_are_allowed_and_no_others(settings: Any) -> None:
    settings.INFERENCE_REMOTE_ALLOWED_NETWORKS = ["10.0.0.0/8", "127.0.0.1/32"]
    assert _register("http://10.1.2.3:8000").pk
    ModelVersion.objects.all().delete()
    assert _register("http://[::ffff:127.0.0.1]:8000").pk  # the same host, mapped
    ModelVersion.objects.all().delete()
    for url in ("http://192.168.1.10", "http://127.0.0.2", "http://169.254.169.254"):
        with pytest.raises(ValidationError):
            _register(url)


def test_it_refuses_hosts_outside_the_allowed_host_names(settings: Any) -> None:
    settings.INFERENCE_REMOTE_ALLOWED_HOSTS = [".models.example", "93.184.216.34"]
    assert _register("http://triton.models.example:8000").pk
    ModelVersion.objects.all().delete()
    assert _register("http://93.184.216.34").pk
    ModelVersion.objects.all().delete()
    with pytest.raises(ValidationError, match="INFERENCE_REMOTE_ALLOWED_HOSTS does not list"):
        _register("http://attacker.example")


def test_registermodel_and_the_admin_say_why_a_url_is_refused(admin_client) -> None:
    options = json.dumps({"url": "http://169.254.169.254", "model": "m"})
    with pytest.raises(CommandError, match="link-local address"):
        call_command("registermodel", "meta", "1", "--runtime", "kserve", "--options", options)
    model = Model.objects.create(name="meta")
    response = admin_client.post(
        "/admin/inference/modelversion/add/",
        {
            "model": model.pk,
            "version": "1",
            "runtime": "openai",
            "runtime_options": json.dumps({"url": "http://10.0.0.8:8000/v1"}),
            "input_schema": "{}",
            "device": "cpu",
            "queue": "cpu",
            "max_batch_size": 8,
            "max_delay_ms": 5,
        },
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert "private or reserved address, which INFERENCE_REMOTE_ALLOWED_NETWORKS" in page
    assert not ModelVersion.objects.exists()


def test_a_stored_version_with_a_refused_url_is_unavailable_and_answers_503(
    api: Any, eager: None
) -> None:
    """Registered before the allow-list was narrowed: it shows and answers why, without the
    address (tenants read it)."""
    version = _register("http://93.184.216.34:8000")
    version.activate(actor="test")
    ModelVersion.objects.filter(pk=version.pk).update(
        runtime_options={"url": "http://169.254.169.254", "model": "model"}
    )
    [shown] = api.get("/v1/models/remote").json()["versions"]
    assert shown["available"] is False
    assert shown["unavailable_reason"] == (
        "unavailable: invalid runtime_options: url's host is a link-local address, which "
        "INFERENCE_REMOTE_ALLOWED_NETWORKS does not allow"
    )
    response = api.post("/v1/models/remote/infer", {"input": {"x": 1}}, format="json")
    assert response.status_code == 503
    assert "169.254" not in response.json()["detail"]


def test_it_refuses_at_connect_time_what_a_name_resolves_to(upstream: FakeUpstream) -> None:
    """No registration check ran (or the name resolved elsewhere then): the worker resolves,
    checks, and never opens the connection."""
    refused = UPSTREAM_CALLS.labels("model", "refused")
    before = refused._value.get()
    runtime = runtime_class("kserve")(_spec(f"http://localhost:{upstream.port}", retries=2))
    with pytest.raises(UpstreamUnavailable) as caught:
        runtime.load(None)
    assert str(caught.value) == (
        "unavailable: the upstream of model:1 is at an address that "
        "INFERENCE_REMOTE_ALLOWED_NETWORKS does not allow"
    )
    assert caught.value.status == 503
    assert upstream.seen == []
    assert refused._value.get() == before + 1  # one attempt: a refusal is not retried


def test_a_name_rebound_to_a_refused_address_is_not_reached(
    upstream: FakeUpstream, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name resolves to an allowed address when it is checked and to a
    refused one at connect time; only the connect-time answer is ever connected to."""
    settings.INFERENCE_REMOTE_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    answers = {"rebind.test": [ipaddress.ip_address("93.184.216.34")]}
    monkeypatch.setattr(egress, "resolve", lambda host, port: answers[host])
    _register(f"http://rebind.test:{upstream.port}")  # the registration check passes
    answers["rebind.test"] = [ipaddress.ip_address("169.254.169.254")]
    runtime = runtime_class("kserve")(_spec(f"http://rebind.test:{upstream.port}"))
    with pytest.raises(UpstreamUnavailable, match="does not allow"):
        runtime.load(None)
    # Refused and allowed answers together: the connection goes to the checked, allowed one
    # (this resolver knows no "rebind.test": reaching the server proves nothing re-resolved).
    answers["rebind.test"] = [ipaddress.ip_address(a) for a in ("169.254.169.254", "127.0.0.1")]
    runtime = runtime_class("kserve")(_spec(f"http://rebind.test:{upstream.port}"))
    runtime.load(None)
    try:
        assert runtime.predict([{"x": 4}]) == [{"y": 8}]
    finally:
        runtime.close()
    assert [seen.path for seen in upstream.seen] == ["/v2/models/model", INFER]


def test_it_refuses_to_start_with_a_network_it_cannot_read() -> None:
    from config.tests.test_settings import _settings_import

    result = _settings_import(DEBUG="true", INFERENCE_REMOTE_ALLOWED_NETWORKS="10.0.0.0/33")
    assert result.returncode != 0
    assert "INFERENCE_REMOTE_ALLOWED_NETWORKS" in result.stderr
