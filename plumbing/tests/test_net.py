"""Forwarded headers count only from a trusted proxy (plumbing/net.py, ProxyHeadersMiddleware),
and gunicorn's own setting is derived from the same two settings."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def behind_proxy(settings):
    settings.TRUSTED_PROXY_COUNT = 1
    settings.TRUSTED_PROXY_IPS = ["10.0.0.0/8"]
    settings.RATELIMIT_IP_RATE = "1/h"


def test_it_believes_x_forwarded_for_from_a_trusted_peer(client, behind_proxy):
    first = client.get("/v1/tenant", REMOTE_ADDR="10.1.2.3", HTTP_X_FORWARDED_FOR="3.3.3.3")
    assert first.status_code == 401
    other = client.get("/v1/tenant", REMOTE_ADDR="10.1.2.3", HTTP_X_FORWARDED_FOR="4.4.4.4")
    assert other.status_code == 401  # another client behind the proxy: its own budget
    again = client.get("/v1/tenant", REMOTE_ADDR="10.9.9.9", HTTP_X_FORWARDED_FOR="3.3.3.3")
    assert again.status_code == 429


def test_it_ignores_x_forwarded_for_from_a_peer_that_is_no_proxy(client, behind_proxy):
    first = client.get("/v1/tenant", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="5.5.5.5")
    assert first.status_code == 401
    forged = client.get("/v1/tenant", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="6.6.6.6")
    assert forged.status_code == 429


def test_it_takes_the_scheme_only_from_a_trusted_proxy(client, behind_proxy, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    https = {"HTTP_X_FORWARDED_PROTO": "https"}
    assert client.get("/api/schema/", REMOTE_ADDR="10.0.0.5", **https).status_code == 200
    # A client's own "https" does not skip the redirect to HTTPS.
    assert client.get("/api/schema/", REMOTE_ADDR="192.0.2.1", **https).status_code == 301


def test_it_trusts_any_peer_with_a_star(client, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    settings.TRUSTED_PROXY_IPS = ["*"]
    settings.RATELIMIT_IP_RATE = "1/h"
    assert client.get("/v1/tenant", HTTP_X_FORWARDED_FOR="7.7.7.7").status_code == 401
    assert client.get("/v1/tenant", HTTP_X_FORWARDED_FOR="8.8.8.8").status_code == 401


@pytest.mark.parametrize(
    ("env", "allowed"),
    [
        ({}, []),
        ({"TRUSTED_PROXY_IPS": "*"}, []),
        ({"TRUSTED_PROXY_COUNT": "1"}, ["127.0.0.1", "::1"]),
        ({"TRUSTED_PROXY_COUNT": "1", "TRUSTED_PROXY_IPS": "*"}, ["*"]),
        ({"TRUSTED_PROXY_COUNT": "2", "TRUSTED_PROXY_IPS": "10.0.0.0/8"}, ["10.0.0.0/8"]),
    ],
)
def test_gunicorn_believes_forwarded_headers_from_the_same_peers_as_django(
    env, allowed, monkeypatch
):
    from gunicorn.config import Config

    for name in ("TRUSTED_PROXY_COUNT", "TRUSTED_PROXY_IPS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    conf = runpy.run_path(str(ROOT / "deploy" / "gunicorn.conf.py"))
    cfg = Config()
    cfg.set("forwarded_allow_ips", conf["forwarded_allow_ips"])
    assert cfg.forwarded_allow_ips == allowed
