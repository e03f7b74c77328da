"""daphne configured for Sluice (``manage.py serve``): write-buffer probes for stream
backpressure, and the request body limit held inside daphne itself.

daphne reads a request's whole body (into Twisted's request content) before it calls the
application, then queues all of it for the application at once: an ASGI middleware would see
the body only after it had arrived, in memory. So the limit (``plumbing.bodylimit.body_limit``)
is checked in daphne's request object as the body arrives: a declared length over it is
refused when the headers end, a chunked body when its bytes cross it, with the 413
problem+json written straight to the connection, which then closes. The rest of the body is
never read, buffered or handed to the application.
"""

from __future__ import annotations

import time
from typing import Any

from daphne.http_protocol import HTTPFactory, WebRequest
from daphne.server import Server

from plumbing.bodylimit import body_limit, log_refused, too_large
from streaming.flow import add_probe


class BodyLimitedRequest(WebRequest):
    """daphne's request, refusing a body over its path's limit as it arrives."""

    limit: int | None = None
    received = 0
    refused = False

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        # Twisted names the request's path only once the body is in; the channel has the
        # request line already. (HTTP/2 streams have none: daphne here serves HTTP/1.1.)
        path = getattr(self.channel, "_path", None)
        if path is None:
            return
        self.path_text = path.split(b"?", 1)[0].decode("latin-1")
        self.method_text = getattr(self.channel, "_command", b"").decode("latin-1")
        self.started = time.perf_counter()
        self.limit = body_limit(self.path_text)
        if self.limit is not None and length is not None and length > self.limit:
            # Refused before the body: no "100 Continue" invites it.
            self.requestHeaders.removeHeader(b"Expect")
            self._refuse(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.refused:
            return  # what was already in flight when the 413 went out
        self.received += len(data)
        if self.limit is not None and self.received > self.limit:
            self._refuse(None)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.refused:
            return  # the body's end after a 413: no application runs
        super().requestReceived(command, path, version)

    def _refuse(self, length: int | None) -> None:
        assert self.limit is not None
        self.refused = True
        body, headers = too_large(self.path_text, self.limit, length)
        head = "HTTP/1.1 413 Request Entity Too Large\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers
        )
        self.channel.transport.write(head.encode("latin-1") + b"\r\n" + body)
        self.channel.loseConnection()
        log_refused(
            server="asgi", method=self.method_text, path=self.path_text, started=self.started
        )


class BodyLimitedHTTPFactory(HTTPFactory):
    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = BodyLimitedRequest
        return protocol


class SluiceServer(Server):
    """daphne's Server, putting a probe of each connection's write buffer into the scope, so
    stream deliveries can wait for a slow client instead of buffering without limit
    (streaming.flow), and serving HTTP through :class:`BodyLimitedHTTPFactory`."""

    def create_application(self, protocol: Any, scope: dict[str, Any]) -> Any:
        add_probe(scope, protocol)
        return super().create_application(protocol, scope)

    # daphne's run() builds its HTTP factory inline, with no hook: this attribute hands it ours.
    @property
    def http_factory(self) -> HTTPFactory:
        return self._http_factory

    @http_factory.setter
    def http_factory(self, factory: HTTPFactory) -> None:
        if not isinstance(factory, BodyLimitedHTTPFactory):
            factory = BodyLimitedHTTPFactory(self)
        self._http_factory = factory


def closing_handshake(server: Any) -> None:
    server.ws_factory.setProtocolOptions(failByDrop=False)
