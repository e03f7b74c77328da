"""Write backpressure for stream deliveries on daphne.

daphne's ``send`` never waits: it hands each message to Twisted, whose transport buffers
whatever the socket cannot take yet, without limit. A stream delivered faster than a client
reads would pile up there. ``manage.py serve`` runs a daphne that puts a probe of the
connection's write buffer into the scope (``scope["extensions"]["sluice.write_buffer"]``);
deliveries call :func:`drain` before each frame and stop reading the log while the buffer is
above ``HIGH_WATER``, until it is below ``LOW_WATER``. The reader then holds only its position,
and if the producer trims past it meanwhile it gets a ``gap`` event when it catches up.
Behind a server without the probe (tests' in-memory communicators), ``drain`` is a no-op.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping
from typing import Any

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
POLL_SECONDS = 0.02
EXTENSION = "sluice.write_buffer"


def transport_buffered(protocol: Any) -> int:
    """Bytes queued in a Twisted protocol's transport and not yet taken by the socket."""
    transport = getattr(protocol, "transport", None)
    if transport is None:
        return 0
    data = getattr(transport, "dataBuffer", b"")
    return (
        len(data)
        - int(getattr(transport, "offset", 0))
        + int(getattr(transport, "_tempDataLen", 0))
    )


def add_probe(scope: MutableMapping[str, Any], protocol: Any) -> None:
    scope.setdefault("extensions", {})[EXTENSION] = lambda: transport_buffered(protocol)


def probe(scope: MutableMapping[str, Any]) -> Callable[[], int] | None:
    extensions = scope.get("extensions") or {}
    found = extensions.get(EXTENSION)
    return found if callable(found) else None


async def drain(scope: MutableMapping[str, Any]) -> None:
    """Wait while the connection's write buffer is above the high-water mark."""
    buffered = probe(scope)
    if buffered is None or buffered() < HIGH_WATER:
        return
    while buffered() > LOW_WATER:
        await asyncio.sleep(POLL_SECONDS)
