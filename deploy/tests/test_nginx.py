"""deploy/nginx: nginx accepts the configuration, and routes real requests to real gunicorn
and daphne processes (TLS, the HTTP redirect, streams, WebSocket, gzip, request ids)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deploy.tests.conftest import (
    DEPLOY,
    Running,
    answers,
    compose,
    compose_default,
    free_port,
    program,
    spawn,
    wait_for,
)


def nginx() -> str:
    path = shutil.which("nginx")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not on PATH under CI (.ci/run installs it)")
        pytest.skip("nginx is not installed here (apt-get install nginx); .ci/run installs it")
    return path


def prepare(root: Path, upstreams: dict[str, int], listen: tuple[int, int] | None = None) -> Path:
    """deploy/nginx copied into ``root`` with a fresh self-signed certificate, the compose
    service names of the upstreams pointed at local ports and, for a live run, the listen
    ports moved to free ones. Nothing else of the configuration changes."""
    root.mkdir()
    (root / "tmp").mkdir()
    (root / "certs").mkdir()
    shutil.copy(DEPLOY / "nginx" / "nginx.conf", root / "nginx.conf")
    conf = (DEPLOY / "nginx" / "sluice.conf").read_text()
    for service, port in upstreams.items():
        conf, count = re.subn(rf"server {service}:\d+;", f"server 127.0.0.1:{port};", conf)
        assert count == 1, f"no upstream {service} in sluice.conf"
    if listen is not None:
        http, https = listen
        conf = re.sub(r"^\s*listen \[::\]:.*$", "", conf, flags=re.MULTILINE)
        conf = conf.replace("listen 80;", f"listen 127.0.0.1:{http};")
        conf = conf.replace("listen 443 ", f"listen 127.0.0.1:{https} ")
    (root / "sluice.conf").write_text(conf)
    certs = root / "certs"
    openssl = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run(
        [
            *openssl,
            "-subj",
            "/CN=localhost",
            "-keyout",
            certs / "tls.key",
            "-out",
            certs / "tls.crt",
        ],
        check=True,
        capture_output=True,
    )
    return root


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    root = prepare(tmp_path / "nginx", {"web": 8000, "unary": 8002, "asgi": 8001, "static": 8080})
    result = subprocess.run(
        [nginx(), "-p", str(root), "-c", "nginx.conf", "-e", "stderr", "-t"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@dataclass
class Stack:
    http: str
    https: str
    ports: dict[str, int]
    proxy: Running

    def upstream_of(self, request_id: str) -> str:
        """The upstream nginx sent a request to, from its JSON access log."""
        for _ in range(20):
            for line in self.proxy.output().splitlines():
                if line.startswith("{") and f'"request_id":"{request_id}"' in line:
                    return json.loads(line)["upstream"]
            time.sleep(0.1)
        pytest.fail(f"no access log line for {request_id}:\n{self.proxy.output()}")

    def which(self, request_id: str) -> str:
        upstream = self.upstream_of(request_id)
        return next(name for name, port in self.ports.items() if upstream.endswith(f":{port}"))


@pytest.fixture
def stack(process_env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    binary = nginx()
    ports = {"web": free_port(), "unary": free_port(), "asgi": free_port(), "static": free_port()}
    http, https = free_port(), free_port()
    # nginx (TRUSTED_PROXY_COUNT=1 pairs with it) in front of the compose web and asgi commands.
    env = {**process_env, "TRUSTED_PROXY_COUNT": "1", "PORT": str(ports["web"])}
    env["WEB_CONCURRENCY"], env["GUNICORN_THREADS"] = "1", "4"
    services = compose()["services"]
    web_cmd = [compose_default(str(a)) for a in services["web"]["command"]]
    asgi_cmd = [compose_default(str(a)) for a in services["asgi"]["command"]]
    asgi_cmd[asgi_cmd.index("--port") + 1] = str(ports["asgi"])
    unary_cmd = [compose_default(str(a)) for a in services["unary"]["command"]]
    unary_cmd[unary_cmd.index("--port") + 1] = str(ports["unary"])
    root = prepare(tmp_path / "nginx", ports, listen=(http, https))
    nginx_cmd = [binary, "-p", str(root), "-c", "nginx.conf", "-e", "stderr", "-g", "daemon off;"]
    with (
        spawn([program(web_cmd[0]), *web_cmd[1:]], env, tmp_path / "web.log") as web,
        spawn([program(asgi_cmd[0]), *asgi_cmd[1:]], env, tmp_path / "asgi.log") as asgi,
        spawn([program(unary_cmd[0]), *unary_cmd[1:]], env, tmp_path / "unary.log") as unary,
        spawn(nginx_cmd, env, tmp_path / "nginx.log") as proxy,
    ):
        wait_for(answers(f"http://127.0.0.1:{ports['web']}/healthz"), running=web, what="web")
        wait_for(answers(f"http://127.0.0.1:{ports['asgi']}/healthz"), running=asgi, what="asgi")
        wait_for(answers(f"http://127.0.0.1:{ports['unary']}/healthz"), running=unary, what="unary")
        wait_for(answers(f"http://127.0.0.1:{http}/healthz"), running=proxy, what="nginx")
        yield Stack(f"http://127.0.0.1:{http}", f"https://127.0.0.1:{https}", ports, proxy)


@pytest.mark.e2e
def test_nginx_routes_like_the_design_says(stack: Stack) -> None:
    with httpx.Client(verify=False, timeout=10) as client:  # noqa: S501 - self-signed test cert
        # Plain HTTP: health only; everything else is sent to HTTPS.
        assert client.get(f"{stack.http}/healthz").status_code == 200
        moved = client.get(f"{stack.http}/v1/tenant")
        assert moved.status_code == 301
        assert moved.headers["Location"].startswith("https://127.0.0.1/v1/tenant")

        routes = {
            "/v1/tenant": "web",
            "/api/docs/": "web",
            "/v1/streams/chat/abc": "asgi",
            "/v1/jobs/42/events": "asgi",
            "/ws/v1/streams/abc": "asgi",
            "/v1/media/video/abc/preview": "asgi",
            "/v1/models/digits/infer": "unary",
            "/v1/models/digits/infer?stream=true": "unary",
            "/v1/models/digits/infer?stream=false": "unary",
            "/v1/models/digits": "web",
            "/v1/chat/completions": "web",
        }
        for i, (path, upstream) in enumerate(routes.items()):
            rid = f"route-{i}"
            response = client.get(f"{stack.https}{path}", headers={"X-Request-ID": rid})
            # The app saw the proxy's request id and answered through it.
            assert response.headers.get("X-Request-ID") == rid or path.startswith("/ws/")
            assert stack.which(rid) == upstream, path

        # A WebSocket handshake reaches daphne with its Upgrade header intact.
        ws = client.get(
            f"{stack.https}/ws/v1/streams/abc",
            headers={
                "X-Request-ID": "ws-1",
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Origin": "https://127.0.0.1",
            },
        )
        assert stack.which("ws-1") == "asgi"
        # 101: the upgrade reached daphne and the stream consumer accepted it (it asks for
        # credentials next). A 404 would mean the upgrade was lost and Django answered HTTP.
        assert ws.status_code == 101, ws.status_code

        # Without a usable id from the caller, nginx makes one up and the app uses it; the
        # response carries it once.
        for sent in ({}, {"X-Request-ID": "not a valid id!"}):
            response = client.get(f"{stack.https}/healthz", headers=sent)
            (generated,) = response.headers.get_list("X-Request-ID")
            assert re.fullmatch(r"[0-9a-f]{32}", generated)
            assert stack.which(generated) == "web"

        # Static files go to the static server; nothing listens there in this test, and
        # nginx's own 502 still carries the request id.
        down = client.get(
            f"{stack.https}/static/admin/css/base.css", headers={"X-Request-ID": "s-1"}
        )
        assert down.status_code == 502
        assert down.headers["X-Request-ID"] == "s-1"
        assert stack.which("s-1") == "static"

        # JSON is compressed.
        schema = client.get(
            f"{stack.https}/api/schema/?format=json", headers={"Accept-Encoding": "gzip"}
        )
        assert schema.status_code == 200
        assert schema.headers["Content-Encoding"] == "gzip"
