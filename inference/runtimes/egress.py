"""Where the remote runtimes (``kserve``, ``openai``) may connect.

A version's ``url`` comes from the registry, and whoever can register a version could point the
workers at the cloud's metadata service (169.254.169.254), the database, Redis or an admin port
on localhost. So every address a remote runtime connects to must be public (globally routable)
or inside ``INFERENCE_REMOTE_ALLOWED_NETWORKS``; loopback, link-local, private, shared (CGNAT),
reserved, multicast and unspecified addresses are refused otherwise, including IPv4 addresses
inside IPv6 ones (``::ffff:127.0.0.1``, 6to4, NAT64). The URL's host must also match
``INFERENCE_REMOTE_ALLOWED_HOSTS`` (Django's ``ALLOWED_HOSTS`` patterns; ``*`` by default).

Checked three times: when a version is registered or edited (the name resolved then), whenever
its options are parsed (cheap: host pattern and literal addresses only), and at every
connection a worker opens: the name is resolved once, each address checked, and the socket
connected to a checked address, so a name that later resolves elsewhere (DNS rebinding) cannot
reach a refused one. ``httpcore`` is imported inside functions, like the runtimes' engines.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import validate_host

from inference.runtimes.base import UpstreamUnavailable

if TYPE_CHECKING:
    import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Numeric IPv4 forms a resolver accepts besides dotted quads: 2130706433, 0x7f000001, 127.1.
_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$")
SETTING = "INFERENCE_REMOTE_ALLOWED_NETWORKS"


class EgressRefused(UpstreamUnavailable):
    """The upstream's name resolved only to addresses the allow-list refuses: 503, not retried,
    and not counted against the upstream's breaker (nothing was sent)."""


@functools.cache
def _networks(values: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(value, strict=False) for value in values)


def allowed_networks() -> tuple[Network, ...]:
    return _networks(tuple(settings.INFERENCE_REMOTE_ALLOWED_NETWORKS))


def _embedded(address: Address) -> list[Address]:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64), which is where it leads."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address in _NAT64:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    return []


def _kind(address: Address) -> str | None:
    """What makes an address non-public, or None for a public one."""
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private or reserved"
    if not address.is_global:
        return "not globally routable"
    return None


def refusal(address: Address) -> str | None:
    """Why connecting to this address is refused (its kind), or None when it is allowed."""
    candidates = [address, *_embedded(address)]
    for network in allowed_networks():
        if any(c.version == network.version and c in network for c in candidates):
            return None
    for candidate in reversed(candidates):  # where it leads names it best
        kind = _kind(candidate)
        if kind:
            return kind
    return None


def literal(host: str) -> Address | None:
    """The address a URL's host spells out, in any form a resolver would accept."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _host_pattern(host: str) -> str:
    return f"[{host}]" if ":" in host else host  # IPv6 literals as in ALLOWED_HOSTS


def host_refusal(host: str) -> str | None:
    """Without resolving anything: why a URL naming this host is refused, or None. The reason
    names neither host nor address (it is shown where tenants can read it)."""
    if not validate_host(_host_pattern(host), settings.INFERENCE_REMOTE_ALLOWED_HOSTS):
        return "url names a host that INFERENCE_REMOTE_ALLOWED_HOSTS does not list"
    address = literal(host)
    if address is not None:
        kind = refusal(address)
        if kind:
            return f"url's host is a {kind} address, which {SETTING} does not allow"
    return None


def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to, in the resolver's order (``socket.gaierror`` when it
    resolves to none)."""
    found: list[Address] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        address = ipaddress.ip_address(sockaddr[0])
        if address not in found:
            found.append(address)
    return found


def _described(refused: Iterable[tuple[Address, str]]) -> str:
    return ", ".join(f"{address} ({kind})" for address, kind in refused)


def url_refusal(url: str) -> str | None:
    """At registration: why this upstream URL is refused, or None. Resolves the host; a name
    that does not resolve here is accepted (the workers' resolver decides at connect time,
    where the same check applies). The reason names the host and its addresses."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return None  # not a URL at all: the runtime's own option check says so
    reason = host_refusal(host)
    if reason:
        return f"{reason}: {host}"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = resolve(host, port)
    except (OSError, ValueError):
        return None
    refused = [(a, kind) for a in addresses if (kind := refusal(a))]
    if addresses and len(refused) == len(addresses):
        return (
            f"url's host {host} resolves only to refused addresses: {_described(refused)} "
            f"(list their network in {SETTING} if they are meant)"
        )
    return None


def transport(limits: httpx.Limits) -> httpx.HTTPTransport:
    """An httpx transport whose every new connection goes through :func:`resolve` and
    :func:`refusal` (an :class:`EgressRefused` when no address is allowed). Upstreams are
    called directly: proxies from the environment would resolve names beyond this check."""
    import httpcore
    import httpx

    made = httpx.HTTPTransport(limits=limits, trust_env=False)
    # httpx has no public hook for opening a connection; httpcore's pool takes a network
    # backend. Same settings as httpx's own pool (httpx is pinned; tests cover the refusal).
    made._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_backend_class()(),
    )
    return made


@functools.cache
def _backend_class() -> type[Any]:
    import httpcore

    class CheckedBackend(httpcore.SyncBackend):
        def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,
            local_address: str | None = None,
            socket_options: Any = None,
        ) -> httpcore.NetworkStream:
            try:
                addresses = resolve(host, port)
            except (OSError, ValueError) as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
            refused = [(a, kind) for a in addresses if (kind := refusal(a))]
            allowed = [a for a in addresses if not refusal(a)]
            if not allowed:  # the caller logs this message and answers without the addresses
                raise EgressRefused(f"{host} resolves only to {_described(refused)}")
            failed: Exception | None = None
            for address in allowed:  # as socket.create_connection would, but checked
                try:
                    return super().connect_tcp(
                        str(address), port, timeout, local_address, socket_options
                    )
                except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                    failed = exc
            assert failed is not None
            raise failed

    return CheckedBackend
