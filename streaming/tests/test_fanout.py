"""One reader per stream per process, many subscribers, the log's resume semantics kept."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from django.conf import settings

from streaming import fanout
from streaming.eventlog import END, GAP, MemoryLog, RedisLog


class CountingLog:
    """The real log, counting reads."""

    def __init__(self, inner):
        self.inner, self.reads = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def aread(self, *args, **kwargs):
        self.reads += 1
        return await self.inner.aread(*args, **kwargs)


@pytest.fixture(params=["memory", "redis"])
def log(request):
    if request.param == "memory":
        return MemoryLog()
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL (PostgreSQL + Redis pass)")
    return RedisLog(settings.REDIS_URL, settings.REDIS_KEY_PREFIX)


def _stream(log, maxlen=1000):
    name = f"f-{uuid.uuid4().hex}"
    log.create(name, tenant_id=1, kind="metrics", maxlen=maxlen, ttl=60)
    return name


async def _collect(hub, stream, after=None):
    got = []
    async for batch in hub.follow(stream, after):
        got.extend(item.event for item in batch)
    return got


def test_many_subscribers_share_one_reader(log):
    stream = _stream(log)
    counting = CountingLog(log)

    async def run():
        hub = fanout.Hub(counting)
        subscribers = [asyncio.create_task(_collect(hub, stream)) for _ in range(300)]
        await asyncio.sleep(0.2)
        ids = []
        for i in range(40):
            ids.append(await asyncio.to_thread(log.append, stream, "metric", {"i": i}))
        await asyncio.to_thread(log.close, stream)
        results = await asyncio.wait_for(asyncio.gather(*subscribers), 20)
        assert not hub.tails  # the reader stops with its last subscriber
        return ids, results

    ids, results = asyncio.run(run())
    for got in results:
        assert [e.id for e in got[:-1]] == ids
        assert got[-1].event == END
    # 300 subscribers, yet reads are of the order of the batches, not 300 x batches.
    assert counting.reads < 120, counting.reads


def test_a_subscriber_behind_the_trim_gets_a_gap_then_the_rest(log):
    stream = _stream(log, maxlen=50)
    ids = [log.append(stream, "metric", {"i": i}) for i in range(400)]
    log.close(stream)

    got = asyncio.run(_collect(fanout.Hub(log), stream, ids[10]))
    assert got[0].event == GAP
    assert got[0].data["resumes_at"] == ids[-49]
    assert [e.id for e in got[1:-1]] == ids[-49:]
    assert got[-1].event == END


def test_a_subscriber_far_behind_the_window_catches_up_without_holes(log):
    stream = _stream(log, maxlen=5000)
    ids = [log.append(stream, "metric", {"i": i}) for i in range(fanout.WINDOW * 3)]

    async def run():
        hub = fanout.Hub(log)
        ahead = asyncio.create_task(_collect(hub, stream, ids[-1]))
        await asyncio.sleep(0.1)
        behind = asyncio.create_task(_collect(hub, stream, ids[0]))
        await asyncio.sleep(0.1)
        last = await asyncio.to_thread(log.close, stream)
        return await asyncio.wait_for(ahead, 10), await asyncio.wait_for(behind, 10), last

    ahead, behind, last = asyncio.run(run())
    assert [e.id for e in ahead] == [last]
    assert [e.id for e in behind] == [*ids[1:], last]


def test_following_an_ended_stream_from_its_end_returns_at_once(log):
    stream = _stream(log)
    end = log.close(stream)

    async def run():
        return await asyncio.wait_for(_collect(fanout.Hub(log), stream, end), 5)

    assert asyncio.run(run()) == []


def test_a_missing_stream_raises(log):
    async def run():
        await _collect(fanout.Hub(log), "no-such-stream")

    from streaming.eventlog import StreamNotFound

    with pytest.raises(StreamNotFound):
        asyncio.run(run())


def test_a_reader_cancelled_just_as_news_arrives_stays_cancelled() -> None:
    """A client leaving (its task cancelled) as the stream moves must stop the reader. With
    ``asyncio.wait_for`` on Python 3.11 the cancellation was lost and the reader went on."""

    async def run() -> None:
        tail = fanout.Tail(MemoryLog(), "s", None)
        waiter = asyncio.ensure_future(tail.wait(5))
        await asyncio.sleep(0)  # it waits
        tail._notify()  # news ...
        waiter.cancel()  # ... and the client leaves, in the same turn of the loop
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(run())
