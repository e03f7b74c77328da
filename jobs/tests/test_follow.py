"""Following a job's results as its tasks finish (``?format=ndjson&follow=true``): the
commit-order cursor, the WSGI and ASGI loops, and the view's checks. The real thing (a server,
a worker, a client reading while the job runs) is in test_follow_e2e.py."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from asgiref.sync import async_to_sync, sync_to_async
from asgiref.testing import ApplicationCommunicator
from django.db import connection
from django.test import AsyncClient
from django.utils import timezone
from rest_framework.test import APIClient

from jobs import feed, runner, selectors, services
from jobs.inputs import from_list
from jobs.models import Job, Task, TaskStatus
from jobs.selectors import Cursor
from streaming.services import stream_slots_held
from tenants.models import Tenant
from tenants.services import apikey_revoke
from tenants.tests.factories import make_key

pytestmark = pytest.mark.django_db

NDJSON = "application/x-ndjson"


def _job(tenant: Tenant, version: Any, n: int, *, chunk_size: int = 2, attempts: int = 3) -> Job:
    """A job whose chunks nobody runs: the test runs them, in the order it wants."""
    request = services.JobRequest(
        model=version.model,
        version=version,
        inputs=from_list([{"x": i} for i in range(n)]),
        priority=0,
        chunk_size=chunk_size,
        max_attempts=attempts,
        options={},
    )
    return services.job_create(tenant=tenant, request=request)


def _run(job: Job, chunk: int) -> None:
    runner.run_chunk(str(job.pk), chunk)


def _read_all(
    job: Job, after: Cursor | None = None, *, limit: int = 500
) -> tuple[list[tuple[Cursor, tuple[Any, ...]]], Cursor]:
    after = after or Cursor()
    out: list[tuple[Cursor, tuple[Any, ...]]] = []
    while page := selectors.results_after(job.pk, after, limit=limit):
        out += page
        after = page[-1][0]
    return out, after


def _indices(rows: list[tuple[Cursor, tuple[Any, ...]]]) -> list[int]:
    return [row[1] for _, row in rows]


def _lines(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.splitlines() if line.strip()]


# --- the cursor -------------------------------------------------------------------------------


def test_it_reads_finished_tasks_in_commit_order(tenant: Tenant, doubler: Any) -> None:
    job = _job(tenant, doubler, 6)
    for chunk in (2, 0, 1):
        _run(job, chunk)
    rows, _ = _read_all(job, limit=1)
    assert _indices(rows) == [4, 5, 0, 1, 2, 3]
    assert [cursor.seq for cursor, _ in rows] == [1, 1, 2, 2, 3, 3]
    job.refresh_from_db()
    assert job.finish_seq == 3


def test_a_commit_stamped_before_what_was_read_is_not_missed(
    tenant: Tenant, doubler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose clock is behind, or whose commit waited for the job's lock, stamps
    finished_at before rows that committed ahead of it: a cursor on finished_at would skip
    its rows. finish_seq is handed out under the lock, in commit order."""
    job = _job(tenant, doubler, 4)
    now = timezone.now()
    monkeypatch.setattr(timezone, "now", lambda: now + timedelta(seconds=5))
    _run(job, 1)
    seen, cursor = _read_all(job)
    monkeypatch.setattr(timezone, "now", lambda: now)
    _run(job, 0)
    later, _ = _read_all(job, cursor)
    assert (_indices(seen), _indices(later)) == ([2, 3], [0, 1])
    stamps = dict(Task.objects.filter(job=job).values_list("index", "finished_at"))
    assert stamps[0] < stamps[2]  # what a timestamp cursor would have got wrong


def test_reads_between_commits_see_every_task_exactly_once(tenant: Tenant, doubler: Any) -> None:
    job = _job(tenant, doubler, 20, chunk_size=3)
    seen: list[tuple[Cursor, tuple[Any, ...]]] = []
    cursor = Cursor()
    for chunk in (3, 0, 6, 1, 5, 2, 4):
        _run(job, chunk)
        page = selectors.results_after(job.pk, cursor, limit=2)  # less than was committed
        seen += page
        cursor = page[-1][0] if page else cursor
    rest, _ = _read_all(job, cursor)
    ids = [c.task for c, _ in seen + rest]
    assert len(ids) == len(set(ids)) == 20
    assert set(ids) == set(Task.objects.filter(job=job).values_list("id", flat=True))


def test_dead_cancelled_and_replayed_tasks_get_lines(
    tenant: Tenant, broken: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "send_on_commit", lambda *a, **kw: None)
    job = _job(tenant, broken, 4, attempts=1)
    _run(job, 0)
    dead, cursor = _read_all(job)
    assert [selectors.result_line(row) for _, row in dead] == [
        {
            "task": row[0],
            "index": i,
            "status": "dead",
            "error": runner.ENGINE_ERROR,
            "attempts": 1,
        }
        for i, (_, row) in enumerate(dead)
    ]
    # Replayed, the task leaves the finished ones; finishing again, it has a later line.
    replayed = dead[0][0].task
    assert services.dead_replay(job=job, task_ids=[replayed]) == 1
    assert _read_all(job, Cursor())[0] == dead[1:]
    _run(job, 0)
    again, cursor = _read_all(job, cursor)
    assert [c.task for c, _ in again] == [replayed]
    services.job_cancel(job=job)
    cancelled, _ = _read_all(job, cursor)
    assert [selectors.result_line(row) for _, row in cancelled] == [
        {"task": row[0], "index": i, "status": "cancelled"}
        for i, (_, row) in zip((2, 3), cancelled, strict=True)
    ]


def test_a_cursor_token_round_trips_and_nothing_else_parses() -> None:
    assert Cursor.parse(Cursor(3, 17).token) == Cursor(3, 17)
    assert Cursor.parse("0-0") == Cursor()
    assert Cursor.parse(f"{2**63 - 1}-1") == Cursor(2**63 - 1, 1)
    for bad in ("", "3", "3-", "-3", "a-1", "1-b", "1-2-3", " 1-2", "²-1", f"{2**63}-1"):
        with pytest.raises(ValueError, match="not a results cursor"):
            Cursor.parse(bad)


@pytest.mark.django_db(transaction=True)
def test_concurrent_commits_are_read_exactly_once(
    tenant: Tenant, doubler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers committing chunks at once while a reader pages through: PostgreSQL's row lock
    on the job orders the commits, so every task is read once."""
    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers need PostgreSQL (SQLite runs one writer at a time)")
    monkeypatch.setattr(runner, "_send", lambda *a, **kw: None)
    job = _job(tenant, doubler, 200, chunk_size=5)
    chunks = list(range(job.chunks))
    lock = threading.Lock()

    def work() -> None:
        try:
            while True:
                with lock:
                    if not chunks:
                        return
                    chunk = chunks.pop()
                _run(job, chunk)
        finally:
            connection.close()

    workers = [threading.Thread(target=work) for _ in range(4)]
    for thread in workers:
        thread.start()
    seen: list[int] = []
    cursor = Cursor()
    while True:
        writing = any(t.is_alive() for t in workers)
        page = selectors.results_after(job.pk, cursor, limit=7)
        seen += [c.task for c, _ in page]
        cursor = page[-1][0] if page else cursor
        if not (page or writing):
            break
    for thread in workers:
        thread.join()
    assert len(seen) == len(set(seen)) == 200


# --- the view: WSGI (a blocking generator) ----------------------------------------------------


def _url(job: Job, query: str = "") -> str:
    return f"/v1/jobs/{job.pk}/results?format=ndjson&follow=true{query}"


def test_a_wsgi_follower_gets_lines_as_tasks_finish_and_ends_with_the_job(
    api: APIClient, tenant: Tenant, doubler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(tenant, doubler, 6)
    order = iter((1, 2, 0))

    def wait(stream_log: Any, stream: str, after: str | None, seconds: float) -> Any:
        _run(job, next(order))  # the next chunk finishes while the follower waits
        yield b""  # a tick, as feed._wait_sync's
        return after

    monkeypatch.setattr(feed, "_wait_sync", wait)
    response = api.get(_url(job))
    assert response.status_code == 200
    assert response["Content-Type"] == NDJSON
    assert (response["X-Accel-Buffering"], response["Cache-Control"]) == ("no", "no-cache")
    pieces = list(response.streaming_content)
    # Nothing had finished: a blank line first (a client sees the answer at once), then
    # each chunk's lines as it committed, and the end once the job has.
    assert pieces[0] == b"\n"
    assert [[x["index"] for x in _lines(p)] for p in pieces[1:]] == [[2, 3], [4, 5], [0, 1]]
    lines = _lines(b"".join(pieces))
    assert lines[0] == {
        "task": lines[0]["task"],
        "index": 2,
        "status": "succeeded",
        "result": {"y": 4},
        "cursor": f"1-{lines[0]['task']}",
    }
    job.refresh_from_db()
    assert job.status == "succeeded"


def test_a_follower_resumes_after_a_cursor_with_no_gap_and_no_duplicate(
    api: APIClient, tenant: Tenant, doubler: Any
) -> None:
    job = _job(tenant, doubler, 6)
    for chunk in (2, 0, 1):
        _run(job, chunk)
    first = _lines(b"".join(api.get(_url(job)).streaming_content))
    assert [x["index"] for x in first] == [4, 5, 0, 1, 2, 3]
    rest = _lines(b"".join(api.get(_url(job, f"&after={first[2]['cursor']}")).streaming_content))
    assert rest == first[3:]
    dead_only = api.get(_url(job, "&status=dead"))
    assert b"".join(dead_only.streaming_content) == b""


def test_small_pages_and_pieces_still_give_every_line_once_in_commit_order(
    api: APIClient, tenant: Tenant, doubler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed, "PAGE", 2)
    monkeypatch.setattr(feed, "FLUSH_BYTES", 1)  # one line per piece
    job = _job(tenant, doubler, 9, chunk_size=3)
    for chunk in (2, 0, 1):
        _run(job, chunk)
    pieces = list(api.get(_url(job)).streaming_content)
    assert [[x["index"] for x in _lines(p)] for p in pieces] == [
        [i] for i in (6, 7, 8, 0, 1, 2, 3, 4, 5)
    ]


def test_a_status_filtered_follower_gets_only_that_status(
    api: APIClient, tenant: Tenant, broken: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed, "PAGE", 1)
    job = _job(tenant, broken, 4, attempts=1)
    _run(job, 0)  # 0 and 1 dead
    services.job_cancel(job=job)  # 2 and 3 cancelled
    cancelled = _lines(b"".join(api.get(_url(job, "&status=cancelled")).streaming_content))
    assert [(x["index"], x["status"]) for x in cancelled] == [(2, "cancelled"), (3, "cancelled")]
    dead = _lines(b"".join(api.get(_url(job, "&status=dead")).streaming_content))
    assert [(x["index"], x["status"]) for x in dead] == [(0, "dead"), (1, "dead")]
    resumed = api.get(_url(job, f"&status=dead&after={dead[0]['cursor']}"))
    assert _lines(b"".join(resumed.streaming_content)) == dead[1:]


def test_a_quiet_follower_sends_blank_lines(
    api: APIClient, tenant: Tenant, doubler: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.SSE_HEARTBEAT_SECONDS = 0
    job = _job(tenant, doubler, 2)
    waits: list[int] = []

    def wait(stream_log: Any, stream: str, after: str | None, seconds: float) -> Any:
        waits.append(1)
        if len(waits) == 3:
            _run(job, 0)
        yield b""  # a tick, as feed._wait_sync's
        return after

    monkeypatch.setattr(feed, "_wait_sync", wait)
    body = b"".join(api.get(_url(job)).streaming_content)
    assert body.startswith(b"\n\n\n{")
    assert [x["index"] for x in _lines(body)] == [0, 1]


def test_without_its_stream_a_follower_polls_the_database(
    api: APIClient, tenant: Tenant, doubler: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.JOBS_FOLLOW_POLL_SECONDS = 0.01
    job = _job(tenant, doubler, 2)  # its stream was never opened (nothing committed)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        _run(job, 0)

    monkeypatch.setattr(feed, "time", SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
    body = b"".join(api.get(_url(job)).streaming_content)
    assert [x["index"] for x in _lines(body)] == [0, 1]
    assert slept == [0.01]


# --- the view: ASGI (daphne) ------------------------------------------------------------------


def _no_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Committed jobs would be sent to the broker: the tests run the chunks themselves."""
    monkeypatch.setattr(runner, "_send", lambda *a, **kw: None)


@pytest.mark.django_db(transaction=True)
def test_an_asgi_follower_gets_lines_as_tasks_finish_and_ends_with_the_job(
    tenant: Tenant, key: Any, doubler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_dispatch(monkeypatch)
    job = _job(tenant, doubler, 6)

    async def wakeups(stream: str) -> AsyncIterator[None]:
        yield
        for chunk in (1, 2, 0):
            await sync_to_async(_run)(job, chunk)
            yield

    monkeypatch.setattr(feed, "_wakeups", wakeups)

    async def follow() -> tuple[int, str, list[bytes]]:
        response = await AsyncClient().get(_url(job), headers={"X-API-Key": key[1]})
        pieces = [piece async for piece in response.streaming_content]
        return response.status_code, response["Content-Type"], pieces

    status, content_type, pieces = async_to_sync(follow)()
    assert (status, content_type) == (200, NDJSON)
    assert pieces[0] == b"\n"
    assert [[x["index"] for x in _lines(p)] for p in pieces[1:]] == [[2, 3], [4, 5], [0, 1]]


def _http_scope(job: Job, raw_key: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/v1/jobs/{job.pk}/results",
        "raw_path": f"/v1/jobs/{job.pk}/results".encode(),
        "query_string": b"format=ndjson&follow=true",
        "headers": [(b"host", b"testserver"), (b"x-api-key", raw_key.encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


@pytest.mark.django_db(transaction=True)
def test_an_asgi_follower_stops_reading_when_the_client_leaves(
    tenant: Tenant,
    key: Any,
    doubler: Any,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job that never ends, followed by a client that goes away: the follower's loop stops
    (no query after the disconnect) and its stream slot is given back."""
    settings.SSE_HEARTBEAT_SECONDS = 0.02
    settings.JOBS_FOLLOW_POLL_SECONDS = 0.02
    _no_dispatch(monkeypatch)
    job = _job(tenant, doubler, 4)
    queries: list[int] = []
    active = selectors.job_active

    def counted(job_id: Any) -> bool:
        queries.append(1)
        return active(job_id)

    monkeypatch.setattr(selectors, "job_active", counted)
    from config.asgi import application

    async def session() -> tuple[int, int, int]:
        client = ApplicationCommunicator(application, _http_scope(job, key[1]))
        await client.send_input({"type": "http.request", "body": b""})
        start = await client.receive_output(5)
        assert start["status"] == 200
        assert (await client.receive_output(5))["body"] == b"\n"
        while len(queries) < 5:  # the follower goes round while the job stays quiet
            await asyncio.sleep(0.02)
        assert stream_slots_held(tenant.pk) == 1
        await client.send_input({"type": "http.disconnect"})
        await client.wait(5)
        stopped = len(queries)
        await asyncio.sleep(0.2)
        return stopped, len(queries), await sync_to_async(stream_slots_held)(tenant.pk)

    stopped, later, held = async_to_sync(session)()
    assert later == stopped
    assert held == 0


# --- the view: checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("format=ndjson&follow=maybe", "follow"),
        ("format=ndjson&follow=true&after=12", "after"),
        ("format=ndjson&follow=true&after=1-x", "after"),
        ("format=ndjson&after=1-2", "after"),
        ("format=ndjson&follow=true&status=queued", "status"),
        ("format=json&follow=true", "follow"),
        ("follow=true", "follow"),
    ],
)
def test_it_refuses_bad_follow_queries(
    api: APIClient, tenant: Tenant, doubler: Any, query: str, field: str
) -> None:
    job = _job(tenant, doubler, 1)
    response = api.get(f"/v1/jobs/{job.pk}/results?{query}")
    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    assert [e["field"] for e in response.json()["errors"]] == [field]


def test_follow_is_tenant_scoped_and_needs_the_jobs_scope(
    tenant: Tenant, doubler: Any, client_for: Any, assert_cross_tenant_404: Any
) -> None:
    job = _job(tenant, doubler, 1)
    assert_cross_tenant_404("get", _url(job))
    infer_only = client_for(make_key(tenant, scopes=["infer"])[1])
    assert infer_only.get(_url(job)).status_code == 403
    assert APIClient().get(_url(job)).status_code == 401


def test_a_follower_holds_one_of_the_tenants_stream_slots(
    api: APIClient, tenant: Tenant, doubler: Any
) -> None:
    tenant.concurrent_streams = 1
    tenant.save(update_fields=["concurrent_streams"])
    job = _job(tenant, doubler, 2)
    _run(job, 0)
    open_one = api.get(_url(job))
    refused = api.get(_url(job))
    assert refused.status_code == 429
    assert refused.json()["type"] == "urn:sluice:problem:too-many-streams"
    assert refused["Retry-After"] == "1"
    assert len(_lines(b"".join(open_one.streaming_content))) == 2  # ended: the slot is back
    assert stream_slots_held(tenant.pk) == 0
    assert api.get(_url(job)).status_code == 200


def test_the_schema_documents_follow_and_after(client: Any) -> None:
    schema = yaml.safe_load(client.get("/api/schema/").content)
    params = schema["paths"]["/v1/jobs/{job_id}/results"]["get"]["parameters"]
    named = {p["name"]: p for p in params}
    assert named["follow"]["schema"]["type"] == "boolean"
    assert "cursor" in named["after"]["description"]


def test_the_lines_are_those_of_the_plain_ndjson_plus_a_cursor(
    api: APIClient, tenant: Tenant, doubler: Any
) -> None:
    job = _job(tenant, doubler, 3)
    for chunk in (1, 0):
        _run(job, chunk)
    plain = _lines(b"".join(api.get(f"/v1/jobs/{job.pk}/results?format=ndjson").streaming_content))
    followed = _lines(b"".join(api.get(_url(job)).streaming_content))
    assert [x["index"] for x in followed] == [2, 0, 1]
    by_index = sorted(followed, key=lambda x: int(x["index"]))
    assert [{k: v for k, v in x.items() if k != "cursor"} for x in by_index] == plain
    assert all(x["status"] == TaskStatus.SUCCEEDED for x in plain)


# --- the view: bound to its credential --------------------------------------------------------


def _ends(pieces: Any, seconds: float) -> bool:
    """Whether a response body ends within ``seconds`` (read on a thread: one that never ends
    is left behind, not waited for)."""
    done = threading.Event()

    def read() -> None:
        for _ in pieces:
            pass
        done.set()

    threading.Thread(target=read, daemon=True).start()
    return done.wait(seconds)


@pytest.mark.django_db(transaction=True)
def test_a_wsgi_followers_response_ends_when_its_key_is_revoked(
    tenant: Tenant, doubler: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.WS_REAUTH_SECONDS = 0.2
    _no_dispatch(monkeypatch)
    job = _job(tenant, doubler, 4)  # never runs: the follower would wait for ever
    row, raw = make_key(tenant, scopes=["jobs"])
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=raw)
    response = client.get(_url(job))
    pieces = iter(response.streaming_content)
    assert next(pieces) == b"\n"
    assert stream_slots_held(tenant.pk) == 1
    apikey_revoke(key=row)
    # A check within WS_REAUTH_SECONDS, a blocked read within a tick (and room for a loaded
    # machine).
    assert _ends(pieces, 0.2 + 0.25 + 2)
    assert stream_slots_held(tenant.pk) == 0


@pytest.mark.django_db(transaction=True)
def test_an_asgi_followers_response_ends_when_its_key_is_revoked(
    tenant: Tenant, doubler: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.WS_REAUTH_SECONDS = 0.2
    _no_dispatch(monkeypatch)
    job = _job(tenant, doubler, 4)
    row, raw = make_key(tenant, scopes=["jobs"])
    from config.asgi import application

    async def session() -> tuple[float, dict[str, Any], int]:
        client = ApplicationCommunicator(application, _http_scope(job, raw))
        await client.send_input({"type": "http.request", "body": b""})
        assert (await client.receive_output(5))["status"] == 200
        assert (await client.receive_output(5))["body"] == b"\n"
        await sync_to_async(apikey_revoke)(key=row)
        revoked = time.monotonic()
        last = await client.receive_output(3)
        while last.get("more_body"):
            last = await client.receive_output(3)
        took = time.monotonic() - revoked
        await client.wait(5)
        return took, last, await sync_to_async(stream_slots_held)(tenant.pk)

    took, last, held = async_to_sync(session)()
    assert last == {"type": "http.response.body"}  # a complete body, ended
    assert took < 0.2 + 2
    assert held == 0
