"""One suite, both backends: the in-process log and Redis Streams (when REDIS_URL is set)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
from django.conf import settings

from streaming.eventlog import END, GAP, MemoryLog, RedisLog, StreamNotFound, id_key


@pytest.fixture(params=["memory", "redis"])
def log(request):
    if request.param == "memory":
        return MemoryLog()
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL (PostgreSQL + Redis pass)")
    return RedisLog(settings.REDIS_URL, settings.REDIS_KEY_PREFIX)


@pytest.fixture
def stream(log):
    name = f"t-{uuid.uuid4().hex}"
    log.create(name, tenant_id=7, kind="text", maxlen=5, ttl=60)
    return name


def test_it_keeps_events_in_order_with_increasing_ids(log, stream):
    ids = [log.append(stream, "token", {"i": i}) for i in range(3)]
    assert sorted(ids, key=id_key) == ids
    assert len(set(ids)) == 3
    events = log.read(stream)
    assert [e.envelope() for e in events] == [
        {"id": ids[i], "event": "token", "data": {"i": i}} for i in range(3)
    ]


def test_it_resumes_after_an_id_with_no_gap_and_no_duplicate(log, stream):
    ids = [log.append(stream, "token", {"i": i}) for i in range(4)]
    assert [e.id for e in log.read(stream, ids[1])] == ids[2:]
    assert log.read(stream, ids[-1]) == []


def test_a_blocking_read_wakes_on_append(log, stream):
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(log.read(stream, None, block_ms=5000)))
    started = time.monotonic()
    reader.start()
    time.sleep(0.2)
    log.append(stream, "token", {"t": "hi"})
    reader.join(5)
    assert [e.data for e in got] == [{"t": "hi"}]
    assert time.monotonic() - started < 3


def test_a_blocking_read_times_out_empty(log, stream):
    started = time.monotonic()
    assert log.read(stream, None, block_ms=200) == []
    assert 0.15 < time.monotonic() - started < 2


def test_it_trims_to_maxlen_and_tells_a_late_reader_about_the_gap(log, stream):
    ids = [log.append(stream, "token", {"i": i}) for i in range(8)]
    kept = log.read(stream)
    assert [e.data["i"] for e in kept] == [3, 4, 5, 6, 7]
    late = log.read(stream, ids[0])
    assert late[0].event == GAP
    assert late[0].data == {"after": ids[0], "last_dropped": ids[2], "resumes_at": ids[3]}
    assert [e.data["i"] for e in late[1:]] == [3, 4, 5, 6, 7]
    # A reader that is only behind, not past the trim, sees no gap.
    assert [e.event for e in log.read(stream, ids[4])] == ["token"] * 3


def test_close_appends_end_and_readers_stop_blocking(log, stream):
    log.append(stream, "token", {})
    end_id = log.close(stream, {"reason": "done"})
    assert log.meta(stream).closed
    started = time.monotonic()
    assert log.read(stream, end_id, block_ms=3000) == []
    assert time.monotonic() - started < 1
    assert log.read(stream)[-1].event == END


def test_meta_names_the_owner_and_bounds(log, stream):
    meta = log.meta(stream)
    assert (meta.tenant_id, meta.kind, meta.maxlen, meta.ttl, meta.closed) == (
        7,
        "text",
        5,
        60,
        False,
    )
    assert log.meta("no-such-stream") is None


def test_unknown_streams_are_refused(log):
    with pytest.raises(StreamNotFound):
        log.append("no-such-stream", "token", {})
    with pytest.raises(StreamNotFound):
        log.read("no-such-stream")


def test_cancellation_is_a_flag_producers_poll(log, stream):
    assert not log.is_cancelled(stream)
    log.request_cancel(stream)
    assert log.is_cancelled(stream)


def test_memory_streams_expire_after_their_ttl():
    now = [1000.0]
    log = MemoryLog(clock=lambda: now[0])
    log.create("s", tenant_id=1, kind="text", ttl=10)
    log.append("s", "token", {})
    now[0] += 9
    log.append("s", "token", {})  # renews the TTL
    now[0] += 9
    assert len(log.read("s")) == 2
    now[0] += 11
    assert log.meta("s") is None


def test_redis_streams_carry_their_ttl(stream, log):
    if not isinstance(log, RedisLog):
        pytest.skip("Redis only")
    log.append(stream, "token", {})
    for part in ("", "meta"):
        assert 0 < log._redis.ttl(log._key(stream, part)) <= 60


def test_a_stream_can_be_given_to_a_tenant_while_it_lives(log, stream):
    log.adopt(stream, 42)
    assert log.meta(stream).tenant_id == 42
    with pytest.raises(StreamNotFound):
        log.adopt("no-such-stream", 42)
    assert log.meta("no-such-stream") is None


def test_an_async_read_cancelled_just_as_an_event_arrives_stays_cancelled():
    """A reader whose client left (its task cancelled) as an event came must stop. With
    ``asyncio.wait_for`` on Python 3.11 the cancellation was lost and the read returned."""
    log = MemoryLog()
    log.create("s", tenant_id=1, kind="text")

    async def run() -> None:
        reader = asyncio.ensure_future(log.aread("s", block_ms=5000))
        await asyncio.sleep(0)  # it waits
        log.append("s", "token", {})  # an event ...
        reader.cancel()  # ... and the client leaves, in the same turn of the loop
        with pytest.raises(asyncio.CancelledError):
            await reader

    asyncio.run(run())
