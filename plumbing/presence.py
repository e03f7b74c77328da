"""Which queues a Celery worker consumes now, so a request nobody will serve is refused at once;
on the same short-lived claims, which versions a worker is loading (``inference.worker.loading``).

Without this, a request queued where no worker listens (``manage.py runserver``, a stopped or
crashed worker) waited its whole deadline and then got a 504. Now every worker announces the
queues it consumes (the :class:`Presence` consumer bootstep of ``config.celery``, which the
embedded in-process worker runs too): every ``WORKER_PRESENCE_INTERVAL_SECONDS`` it renews, per
queue, a member named after the worker in a Redis sorted set scored by when the claim expires
(``WORKER_PRESENCE_TTL_SECONDS`` from now), and it removes its members when it stops consuming
(a clean shutdown, a lost broker connection). A worker killed outright disappears when its
claims expire. Embedded (no ``REDIS_URL``) the same claims live in a dict of this process,
which is the only process whose worker can serve it (the in-memory broker).

Admission asks :func:`served` for the queue it is about to use: answered from a per-process
cache of ``WORKER_PRESENCE_CACHE_SECONDS`` (a dict look-up on the hot path; one ``ZCOUNT``
per queue and process and second otherwise). A Redis that cannot be asked counts as served:
admission itself then answers that the queue is unreachable.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from redis.exceptions import RedisError

from plumbing.exceptions import ServiceUnavailable

log = logging.getLogger(__name__)


class NoWorker(ServiceUnavailable):
    """503 ``no-worker``: nothing consumes the queue the request needs, so it is not queued."""

    default_detail = "No worker is serving this request's queue; retry later."
    default_code = "no_worker"
    problem_slug = "no-worker"

    def __init__(self, queue: str) -> None:
        super().__init__(
            f"No worker is serving queue {queue}: nothing would run this request, so it was "
            "not queued; retry later."
        )
        self.queue = queue
        self.wait = settings.INFERENCE_RETRY_AFTER_SECONDS
        self.problem_extensions = {"queue": queue}


@functools.cache
def _client() -> Any:
    import redis

    timeout = settings.REDIS_SOCKET_TIMEOUT
    return redis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=timeout, socket_timeout=timeout
    )


# --- claims: members of a named set that lapse unless renewed (Redis, or this process) -------

# Embedded: set name -> {member: claim expiry (wall clock)}.
_local: dict[str, dict[str, float]] = {}
_local_lock = threading.Lock()


def _key(name: str) -> str:
    return f"{settings.REDIS_KEY_PREFIX}:claims:{name}"


def claim(names: Iterable[str], member: str, seconds: float) -> None:
    """``member`` holds a claim in each set of ``names`` for the next ``seconds``."""
    until = time.time() + seconds
    if settings.EMBEDDED:
        with _local_lock:
            for name in names:
                _local.setdefault(name, {})[member] = until
        return
    pipe = _client().pipeline(transaction=False)
    for name in names:
        pipe.zadd(_key(name), {member: until})
        # The set outlives its members a little, never for ever (a name nobody uses again).
        pipe.expire(_key(name), int(seconds) + 60)
    pipe.execute()


def unclaim(names: Iterable[str], member: str) -> None:
    names = list(names)
    if settings.EMBEDDED:
        with _local_lock:
            for name in names:
                _local.get(name, {}).pop(member, None)
        return
    pipe = _client().pipeline(transaction=False)
    for name in names:
        pipe.zrem(_key(name), member)
    pipe.execute()


def claimants(names: Iterable[str]) -> dict[str, list[str]]:
    """The members whose claim on each set is live now. Raises RedisError."""
    names = list(dict.fromkeys(names))
    now = time.time()
    if settings.EMBEDDED:
        with _local_lock:
            return {
                n: sorted(m for m, until in _local.get(n, {}).items() if until > now) for n in names
            }
    pipe = _client().pipeline(transaction=False)
    for name in names:
        pipe.zrangebyscore(_key(name), f"({now}", "+inf")
    found = pipe.execute()
    return {
        name: sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
        for name, members in zip(names, found, strict=True)
    }


def forget_claims() -> None:
    """Drop the embedded claims (tests)."""
    with _local_lock:
        _local.clear()


# --- workers on queues -------------------------------------------------------------------------


def _queue_set(queue: str) -> str:
    return f"workers:{queue}"


def announce(worker: str, queues: Iterable[str]) -> None:
    """Claim ``queues`` for ``worker`` for the next ``WORKER_PRESENCE_TTL_SECONDS``."""
    claim([_queue_set(q) for q in queues], worker, settings.WORKER_PRESENCE_TTL_SECONDS)


def withdraw(worker: str, queues: Iterable[str]) -> None:
    """``worker`` stops consuming ``queues``: its claims end now (in this process's cache
    too, so an embedded server says so at once)."""
    queues = list(queues)
    unclaim([_queue_set(q) for q in queues], worker)
    for queue in queues:
        _cache.pop(queue, None)


def consumers(queues: Iterable[str]) -> dict[str, list[str]]:
    """The workers whose claim on each queue is live now (not cached). Raises RedisError."""
    queues = list(dict.fromkeys(queues))
    found = claimants([_queue_set(q) for q in queues])
    return {queue: found[_queue_set(queue)] for queue in queues}


# queue -> (monotonic time the answer is good until, served)
_cache: dict[str, tuple[float, bool]] = {}


def served(queue: str) -> bool:
    """Whether a worker consumes ``queue`` (as of at most ``WORKER_PRESENCE_CACHE_SECONDS``
    ago). True when tasks run eagerly (tests) or the claims cannot be read."""
    now = time.monotonic()
    found = _cache.get(queue)
    if found is not None and found[0] > now:
        return found[1]
    answer = _ask(queue)
    _cache[queue] = (now + settings.WORKER_PRESENCE_CACHE_SECONDS, answer)
    return answer


def _ask(queue: str) -> bool:
    from celery import current_app as app

    if app.conf.task_always_eager:
        return True
    try:
        return bool(consumers([queue])[queue])
    except (RedisError, OSError):
        log.warning("worker presence of queue %s unreadable; admitting", queue, exc_info=True)
        return True


def require(queue: str) -> None:
    """Raise :class:`NoWorker` unless a worker consumes ``queue``."""
    if not served(queue):
        raise NoWorker(queue)


def forget() -> None:
    """Drop this process's cached answers (tests; a worker that just started here)."""
    _cache.clear()


# Where the apps add the queues they need a worker on (inference: its active versions').
needed_sources: list[Callable[[], Iterable[str]]] = []


def needed_queues() -> list[str]:
    """The queues this deployment needs a worker on now: Celery's default queue, the jobs
    queue and those the apps name (:data:`needed_sources`)."""
    from celery import current_app as app

    found = {app.conf.task_default_queue, settings.JOBS_QUEUE}
    for source in needed_sources:
        found.update(source())
    return sorted(found)


def no_worker_warning(command: str) -> str:
    """What a server process that starts no worker prints at start (``manage.py runserver``,
    ``manage.py serve --no-worker``): what it will not serve, and how to fix that."""
    inference = ", ".join(sorted(settings.INFERENCE_QUEUES))
    lines = [
        f"WARNING: {command} starts no worker. Inference requests on queues {inference} "
        "are answered 503 no-worker, and batch jobs wait on queue "
        f"{settings.JOBS_QUEUE}, until a worker consumes them.",
    ]
    if settings.EMBEDDED:
        lines.append(
            "  `manage.py serve` (what `make run` starts) serves everything with a worker in "
            "its own process."
        )
        return "\n".join(lines)
    try:
        missing = [q for q, names in consumers(needed_queues()).items() if not names]
    except Exception as exc:  # noqa: BLE001 - a warning must not stop the server starting
        missing = []
        lines.append(f"  (which queues have one now is unknown: {type(exc).__name__})")
    if missing:
        lines.append(f"  Queues without a worker now: {', '.join(missing)}.")
    lines.append("  Start one with `make worker` (celery -A config worker); see /readyz.")
    return "\n".join(lines)


class Announcer:
    """A thread that keeps one worker's claims on its queues alive until :meth:`stop`."""

    def __init__(self, worker: str, queues: Iterable[str]) -> None:
        self.worker = worker
        self.queues = sorted(set(queues))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._renew()  # before the first message can be taken: served from this moment on
        self._thread = threading.Thread(target=self._run, name="worker-presence", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        try:
            announce(self.worker, self.queues)
        except (RedisError, OSError):
            log.warning("announcing the queues of %s failed; retrying", self.worker, exc_info=True)
        _cache.clear()  # this process's own answer changes at once (embedded)

    def _run(self) -> None:
        while not self._stop.wait(settings.WORKER_PRESENCE_INTERVAL_SECONDS):
            self._renew()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            withdraw(self.worker, self.queues)
        except (RedisError, OSError):
            log.warning("withdrawing the queues of %s failed", self.worker, exc_info=True)


def consumed_queues(consumer: Any) -> list[str]:
    """The queue names a Celery consumer takes messages from."""
    queues = consumer.app.amqp.queues
    return sorted(queues.consume_from or queues)
