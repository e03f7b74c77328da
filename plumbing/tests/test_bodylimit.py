"""Body limits hold on every server before the body is read and before authentication:
real gunicorn, uvicorn (the unary server) and daphne (``manage.py serve``), declared and
chunked bodies, and the server's memory while a client streams far more than the limit."""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from plumbing.bodylimit import MULTIPART_ALLOWANCE, body_limit
from testing.processes import (
    free_port,
    group_rss_mb,
    gunicorn,
    manage,
    own_database,
    running_process,
    server_env,
    uvicorn,
)

LIMIT = 1024 * 1024  # API_MAX_BODY_BYTES of the servers started here
STREAMED_MB = 64  # what the client offers in chunks: 64 times the limit
GROWTH_MB = 16  # the servers' RSS may grow this much (buffers in flight), not by the body


def test_api_paths_have_the_api_limit_and_media_uploads_their_own(settings):
    settings.API_MAX_BODY_BYTES = 10_000_000
    settings.MEDIA_MAX_VIDEO_BYTES = 1_000_000
    settings.MEDIA_MAX_AUDIO_BYTES = 50_000_000
    assert body_limit("/v1/jobs") == 10_000_000
    assert body_limit("/v1/media/video") == 1_000_000 + MULTIPART_ALLOWANCE
    assert body_limit("/v1/media/transcriptions") == 10_000_000  # the API limit comes first
    assert body_limit("/v1/media/speech") == 10_000_000
    assert body_limit("/admin/inference/modelversion/add/") is None


def test_a_declared_media_upload_over_its_limit_gets_413_before_authentication(client, settings):
    settings.MEDIA_MAX_VIDEO_BYTES = 1000
    response = client.post(
        "/v1/media/video",
        b"x",
        content_type="video/mp4",
        CONTENT_LENGTH=str(1000 + MULTIPART_ALLOWANCE + 1),
    )
    assert response.status_code == 413
    assert response.json()["type"] == "urn:sluice:problem:payload-too-large"


SERVERS = ["gunicorn", "uvicorn", "daphne"]


def command(server: str, port: int) -> list[str]:
    if server == "gunicorn":
        return gunicorn(port)
    if server == "uvicorn":
        return uvicorn(port)
    return [sys.executable, "manage.py", "serve", "--no-worker", "--port", str(port)]


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A migrated database with a tenant and a key, shared by this module's servers."""
    with own_database(tmp_path_factory.mktemp("bodylimit")) as url:
        env = server_env(url, API_MAX_BODY_BYTES=str(LIMIT), RATELIMIT_IP_RATE="")
        manage(env, "migrate", "--no-input", "-v0")
        manage(env, "createtenant", "Limits")
        env["KEY"] = manage(env, "createapikey", "--tenant", "limits", "--scopes", "infer,jobs")
        yield env


@pytest.fixture(scope="module", params=SERVERS)
def server(request, provisioned) -> Iterator[tuple[str, int]]:
    port = free_port()
    with running_process(command(request.param, port), provisioned, port=port) as (base, proc):
        yield base, proc.pid


pytestmark = pytest.mark.django_db  # own_database reads the suite's database settings


def head_only(base: str, head: str, *, timeout: float) -> tuple[int, str, bytes]:
    """Send a request head without its body; the answer the server gives meanwhile (status,
    content type, body). A server waiting for the body times out here."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.encode())
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return answer.status, answer.getheader("Content-Type", ""), answer.read()


@pytest.mark.e2e
def test_a_declared_oversized_body_gets_413_before_it_is_sent(server):
    base, _ = server
    head = (
        "POST /v1/models/digits/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {LIMIT + 1}\r\n\r\n"
    )
    status, content_type, body = head_only(base, head, timeout=5)
    assert status == 413
    assert content_type == "application/problem+json"
    assert json.loads(body)["type"] == "urn:sluice:problem:payload-too-large"


@pytest.mark.e2e
def test_a_chunked_body_over_the_limit_gets_413_without_growing_the_server(server):
    base, pid = server
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        block = b"[" * (1024 * 1024)
        for _ in range(STREAMED_MB):
            sent += len(block)
            yield block

    before = group_rss_mb(pid)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, group_rss_mb(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        # No credential: the limit comes before authentication (else this would be a 401).
        response = httpx.post(
            f"{base}/v1/jobs",
            content=body(),
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
    finally:
        done.set()
        sampler.join()
    assert response.status_code == 413, response.text
    assert response.json()["type"] == "urn:sluice:problem:payload-too-large"
    assert sent < STREAMED_MB * 1024 * 1024  # refused while the client was still sending
    assert peak - before < GROWTH_MB, f"RSS {before:.0f} -> {peak:.0f} MiB"


@pytest.mark.e2e
def test_a_chunked_body_within_the_limit_is_served(server, provisioned):
    base, _ = server

    def body() -> Iterator[bytes]:
        yield b'{"scopes": '
        yield b'["infer"]}'

    response = httpx.post(
        f"{base}/v1/auth/token",
        content=body(),
        headers={"Content-Type": "application/json", "X-API-Key": provisioned["KEY"]},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    assert response.json()["scopes"] == ["infer"]  # the body was read: the key has two
