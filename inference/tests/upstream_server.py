"""A small real HTTP server that misbehaves on cue, for the remote runtimes' tests.

It speaks HTTP/1.1 with keep-alive on 127.0.0.1. Each request to a path takes the next planned
behaviour for that path (``plan``); with none left it answers like a tiny OpenAI-compatible and
KServe v2 server (``model`` doubles its input ``x``; chat echoes the last message, streamed word
by word when asked). Every request is recorded with the client's port, so tests can tell
whether connections were reused.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Drop:
    """Close the connection without answering (read the request first)."""


@dataclass
class Stream:
    """Server-sent events, one ``data:`` line each, ``delay`` seconds apart."""

    events: list[str]
    delay: float = 0.0
    content_type: str = "text/event-stream"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    port: int
    at: float


Behaviour = Reply | Drop | Stream


class FakeUpstream:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._plans: dict[str, deque[Behaviour]] = {}
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> FakeUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def plan(self, path: str, *behaviours: Behaviour) -> None:
        with self._lock:
            self._plans.setdefault(path, deque()).extend(behaviours)

    def calls(self, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path == path]

    def _next(self, path: str) -> Behaviour | None:
        with self._lock:
            queue = self._plans.get(path)
            return queue.popleft() if queue else None

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    # -- the default answers ---------------------------------------------------------------

    def default(self, method: str, path: str, body: Any) -> Behaviour:
        if path == "/v1/models":
            return Reply(
                body={"object": "list", "data": [{"id": "fake-llm"}, {"id": "fake-embed"}]}
            )
        if path == "/v1/chat/completions":
            words = str(body["messages"][-1]["content"]).split()
            if body.get("stream"):
                chunks = [
                    json.dumps({"choices": [{"index": 0, "delta": {"content": w + " "}}]})
                    for w in words
                ]
                end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                return Stream([*chunks, json.dumps(end), "[DONE]"], delay=0.05)
            text = " ".join(words)
            message = {"role": "assistant", "content": text}
            return Reply(
                body={"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
            )
        if path == "/v1/completions":
            prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            choices = [
                {"index": i, "text": p.upper(), "finish_reason": "length"}
                for i, p in reversed(list(enumerate(prompts)))  # out of order on purpose
            ]
            return Reply(body={"choices": choices})
        if path == "/v1/embeddings":
            data = [
                {"index": i, "embedding": [float(len(t)), 1.0]} for i, t in enumerate(body["input"])
            ]
            return Reply(body={"object": "list", "data": data})
        if path == "/v2/models/model":
            meta = {
                "name": "model",
                "inputs": [{"name": "x", "datatype": "INT64", "shape": [-1, 1]}],
            }
            return Reply(body=meta)
        if path == "/v2/models/model/ready":
            return Reply(body={})
        if path == "/v2/models/model/infer":
            [tensor] = body["inputs"]
            data = [2 * v for v in tensor["data"]]
            out = {"name": "y", "datatype": "INT64", "shape": tensor["shape"], "data": data}
            return Reply(body={"model_name": "model", "outputs": [out]})
        return Reply(404, {"error": f"no route {path}"})


def _handler(upstream: FakeUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            upstream._record(
                Seen(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    int(self.client_address[1]),
                    time.monotonic(),
                )
            )
            behaviour = upstream._next(self.path) or upstream.default(self.command, self.path, body)
            with contextlib.suppress(OSError):  # the client may have given up (timeouts)
                self._answer(behaviour)

        def _answer(self, behaviour: Behaviour) -> None:
            if isinstance(behaviour, Drop):
                self.close_connection = True
                return
            if isinstance(behaviour, Stream):
                self.send_response(200)
                self.send_header("Content-Type", behaviour.content_type)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for event in behaviour.events:
                    time.sleep(behaviour.delay)
                    self._chunk(f"data: {event}\n\n".encode())
                self._chunk(b"")
                return
            time.sleep(behaviour.delay)
            if isinstance(behaviour.body, str):
                payload, kind = behaviour.body.encode(), "text/plain"
            else:
                payload, kind = json.dumps(behaviour.body or {}).encode(), "application/json"
            self.send_response(behaviour.status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in behaviour.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        do_GET = _serve
        do_POST = _serve

    return Handler


@contextlib.contextmanager
def fake_upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    try:
        yield server
    finally:
        server.stop()
