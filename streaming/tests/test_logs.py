"""The ``logs`` kind: log lines of a request, a job's tasks or a worker, published to streams."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient

from config.celery import app
from streaming import loglines
from streaming.eventlog import MemoryLog, get_log
from streaming.loglines import StreamLogHandler, log_to

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def memory_stream(monkeypatch):
    # Not a worker's process: an earlier test that ran a Celery worker in this process left its
    # platform stream set, and every line would go there too.
    monkeypatch.setattr(loglines, "_worker_stream", None)
    log = MemoryLog()
    name = f"logs.{uuid.uuid4().hex}"
    log.create(name, tenant_id=1, kind="logs", maxlen=1000, ttl=60)
    return log, name


def _record(message: str, level: int = logging.WARNING, **extra) -> logging.LogRecord:
    record = logging.makeLogRecord(
        {"name": "sluice.test", "levelno": level, "levelname": logging.getLevelName(level)}
    )
    record.msg = message
    record.__dict__.update(extra)
    return record


def _wait_for(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_it_publishes_the_lines_of_work_that_has_a_stream(memory_stream):
    log, stream = memory_stream
    handler = StreamLogHandler(append=log.append)
    handler.emit(_record("before: no stream"))
    with log_to(stream):
        handler.emit(_record("inside", tenant="acme", batch=3, request_id="r1"))
    handler.emit(_record("after: no stream"))
    handler.flush()
    lines = [e.data for e in log.read(stream)]
    assert len(lines) == 1
    line = lines[0]
    assert (line["message"], line["level"], line["logger"]) == ("inside", "WARNING", "sluice.test")
    assert (line["tenant"], line["batch"], line["request_id"]) == ("acme", 3, "r1")
    assert "time" in line


def test_a_full_queue_drops_lines_without_blocking_and_says_so(memory_stream):
    log, stream = memory_stream
    gate = threading.Event()

    def slow_append(*args):
        gate.wait(5)
        return log.append(*args)

    handler = StreamLogHandler(bound=5, append=slow_append)
    started = time.monotonic()
    with log_to(stream):
        for i in range(200):
            handler.emit(_record(f"line {i}"))
    assert time.monotonic() - started < 1  # never waits for the stream
    assert handler.dropped > 150
    gate.set()
    handler.flush()
    lines = [e.data for e in log.read(stream)]
    assert len(lines) <= 6
    assert any(line.get("dropped", 0) > 150 for line in lines)


def test_a_failing_stream_neither_raises_nor_recurses(memory_stream):
    _, stream = memory_stream
    calls = []

    def broken(*args):
        calls.append(args)
        logging.getLogger("streaming.loglines").error("the stream log is down")
        raise ConnectionError("down")

    handler = StreamLogHandler(append=broken)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with log_to(stream):
            handler.emit(_record("one"))
            handler.flush()
    finally:
        root.removeHandler(handler)
    assert len(calls) == 1  # the sender's own error line did not come back to the stream
    assert handler.failed == 1


@app.task(name="streaming_test_log_line")
def _log_line(text: str) -> None:
    logging.getLogger("sluice.test.task").warning("task says %s", text)


def test_tasks_queued_under_a_log_stream_log_to_it_and_the_worker_has_its_own(settings):
    from plumbing.embedded import start_worker

    settings.LOG_STREAM_WORKERS = True
    stream = loglines.open_log_stream(tenant_id=1, subject=uuid.uuid4().hex)
    worker = start_worker(queues=["streaming-test"], concurrency=1)
    try:
        with log_to(stream):
            _log_line.apply_async(args=("hello",), queue="streaming-test")
        _log_line.apply_async(args=("nobody's",), queue="streaming-test")

        def lines(name):
            return [e.data for e in get_log().read(name, count=1000)]

        got = _wait_for(lambda: [x for x in lines(stream) if x["logger"] == "sluice.test.task"])
        assert [x["message"] for x in got] == ["task says hello"]
        worker_stream = loglines.worker_stream_name(worker.hostname)
        assert get_log().meta(worker_stream).tenant_id == loglines.PLATFORM_TENANT
        messages = _wait_for(
            lambda: {x["message"] for x in lines(worker_stream)}
            >= {
                "task says hello",
                "task says nobody's",
            }
        )
        assert messages
    finally:
        worker.stop(in_sighandler=False)
        loglines.set_worker_stream(None)


def test_a_tenant_follows_its_own_requests_log_stream(key, client_for, other_tenant, caplog):
    from tenants.tests.factories import make_key

    caplog.set_level(logging.INFO)
    response = client_for(key[1]).get("/v1/tenant", HTTP_X_LOG_STREAM="true")
    assert response.status_code == 200
    stream = response["X-Log-Stream"]
    assert client_for(key[1]).get("/v1/tenant").get("X-Log-Stream") is None  # opt-in only
    loglines.handler().flush()
    lines = [e.data for e in get_log().read(stream)]
    access = [x for x in lines if x["logger"] == "sluice.access"]
    assert access and access[0]["path"] == "/v1/tenant"
    assert access[0]["request_id"] == response["X-Request-ID"]

    async def body(raw):
        client = AsyncClient()
        got = await client.get(f"/v1/streams/{stream}/events", headers={"X-API-Key": raw})
        if got.status_code != 200:
            return got.status_code, ""
        chunks = []
        async for chunk in got.streaming_content:
            chunks.append(chunk.decode())
            if "event: log" in "".join(chunks):
                break
        return 200, "".join(chunks)

    status, text = async_to_sync(body)(key[1])
    assert status == 200 and "sluice.access" in text
    _, other_raw = make_key(other_tenant, scopes=["streams"])
    assert async_to_sync(body)(other_raw)[0] == 404
