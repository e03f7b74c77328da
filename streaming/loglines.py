"""The ``logs`` kind: live structured log lines of a request, a job or a worker, as ``log``
events of a stream.

- :class:`StreamLogHandler` (in ``LOGGING``) sends each record to the stream named by the
  ``plumbing.logcontext.log_stream_var`` context variable, if any, and to the process's worker
  stream, if it has one. ``emit`` never blocks and never raises: it puts the line on a bounded
  queue that one sender thread drains into the stream log; a full queue drops the line and
  counts it (the next line delivered carries ``dropped``); the sender's own log records (a
  Redis error, say) never come back to the handler.
- :func:`log_to` sets the context variable around a piece of work (a job's processing, say).
- A request with an ``X-Log-Stream: true`` header gets a stream of its log lines
  (:class:`RequestLogStreamMiddleware`); the answer names it in ``X-Log-Stream``.
- Celery tasks queued while a log stream is current carry it in a message header, so the
  worker's lines for that task go to the same stream.
- A ``celery worker`` (``LOG_STREAM_WORKERS``) publishes all its lines to the platform stream
  ``worker.<hostname>``, which staff can follow.

Streams of platform subjects (workers, metrics) are owned by tenant id 0, which no tenant has:
only staff sessions can read them.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from plumbing.logcontext import log_stream_var

PLATFORM_TENANT = 0
LOG_EVENT = "log"
QUEUE_BOUND = 10_000
MESSAGE_MAX = 8_192
HEADER = "sluice_log_stream"

# Attributes every LogRecord has: the rest were given through ``extra`` and are kept.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}

_worker_stream: str | None = None


def worker_stream_name(hostname: str) -> str:
    return f"worker.{hostname}"


def set_worker_stream(stream: str | None) -> None:
    """Every line of this process also goes to ``stream`` (a worker's platform stream)."""
    global _worker_stream
    _worker_stream = stream


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)[:MESSAGE_MAX]


def line_of(record: logging.LogRecord) -> dict[str, Any]:
    """The ``log`` event's data: time, level, logger, message, request id, extras."""
    data: dict[str, Any] = {
        "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname,
        "logger": record.name,
        "message": record.getMessage()[:MESSAGE_MAX],
    }
    request_id = getattr(record, "request_id", None)
    if request_id and request_id != "-":
        data["request_id"] = request_id
    for name, value in vars(record).items():
        if name not in _STANDARD and not name.startswith("_"):
            data[name] = _jsonable(value)
    if record.exc_info and record.exc_info[0] is not None:
        data["exc"] = "".join(traceback.format_exception(*record.exc_info))[-MESSAGE_MAX:]
    return data


class StreamLogHandler(logging.Handler):
    """Publishes records to the current log stream(s); bounded, non-blocking, non-recursive."""

    def __init__(
        self,
        level: int | str = logging.NOTSET,
        *,
        bound: int = QUEUE_BOUND,
        append: Callable[[str, str, dict[str, Any]], Any] | None = None,
    ) -> None:
        super().__init__(level)
        self._queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(maxsize=bound)
        self._append = append
        self._sender: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.dropped = 0
        self.failed = 0

    def emit(self, record: logging.LogRecord) -> None:
        if threading.current_thread() is self._sender:
            return  # the sender's own troubles: never back into the stream
        targets = {log_stream_var.get(), _worker_stream} - {None}
        if not targets:
            return
        try:
            data = line_of(record)
            for stream in targets:
                self._queue.put_nowait((str(stream), data))
        except queue.Full:
            self.dropped += 1
            return
        except Exception:  # noqa: BLE001 - a log handler must not raise; logging reports it
            self.handleError(record)
            return
        if self._sender is None:
            self._start()

    def _start(self) -> None:
        with self._start_lock:
            if self._sender is None:
                self._sender = threading.Thread(
                    target=self._send_forever, name="log-stream-sender", daemon=True
                )
                self._sender.start()

    def _send_forever(self) -> None:
        from streaming.eventlog import StreamNotFound, get_log

        append = self._append or get_log().append
        warned = 0.0
        while True:
            stream, data = self._queue.get()
            if self.dropped:
                data = {**data, "dropped": self.dropped}
                self.dropped = 0
            try:
                try:
                    append(stream, LOG_EVENT, data)
                except StreamNotFound:
                    if stream != _worker_stream:
                        raise
                    # A worker quiet for longer than the TTL: its stream expired; open it again.
                    get_log().create(stream, tenant_id=PLATFORM_TENANT, kind="logs")
                    append(stream, LOG_EVENT, data)
            except StreamNotFound:
                self.failed += 1  # expired or never opened: nobody can read it anyway
            except Exception:  # noqa: BLE001 - counted, and reported below once a minute
                self.failed += 1
                if time.monotonic() - warned > 60:
                    warned = time.monotonic()
                    logging.getLogger(__name__).warning(
                        "log lines to streams are failing (%d so far)", self.failed, exc_info=True
                    )

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until the queue is drained (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # the line taken last is being appended


@contextlib.contextmanager
def log_to(stream: str | None) -> Iterator[None]:
    """Log lines of the enclosed work (this thread or task) go to ``stream`` too."""
    token = log_stream_var.set(stream)
    try:
        yield
    finally:
        log_stream_var.reset(token)


def open_log_stream(*, tenant_id: int, subject: str) -> str:
    """A new ``logs`` stream owned by ``tenant_id`` (0: platform, staff only)."""
    from streaming.eventlog import get_log

    stream = f"logs.{subject}"
    get_log().create(stream, tenant_id=tenant_id, kind="logs")
    return stream


def handler() -> StreamLogHandler | None:
    """The configured handler (on the root logger), if any."""
    for found in logging.getLogger().handlers:
        if isinstance(found, StreamLogHandler):
            return found
    return None


# --- Celery: a task queued under a log stream logs to it in the worker -------------------------


def _publish_header(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    stream = log_stream_var.get()
    if stream and headers is not None:
        headers[HEADER] = stream


_task_tokens: dict[str, Any] = {}
_task_tokens_lock = threading.Lock()


def _task_started(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    stream = getattr(getattr(task, "request", None), HEADER, None)
    if stream and task_id:
        token = log_stream_var.set(str(stream))
        with _task_tokens_lock:
            _task_tokens[task_id] = token


def _task_finished(task_id: str | None = None, **kwargs: Any) -> None:
    with _task_tokens_lock:
        token = _task_tokens.pop(task_id or "", None)
    if token is not None:
        with contextlib.suppress(ValueError):  # set in another context: nothing to undo
            log_stream_var.reset(token)


def _worker_started(sender: Any = None, **kwargs: Any) -> None:
    from django.conf import settings

    if not settings.LOG_STREAM_WORKERS:
        return
    hostname = getattr(sender, "hostname", None) or socket.gethostname()
    stream = worker_stream_name(str(hostname))
    try:
        from streaming.eventlog import get_log

        log = get_log()
        if log.meta(stream) is None:
            log.create(stream, tenant_id=PLATFORM_TENANT, kind="logs")
    except Exception:
        logging.getLogger(__name__).exception("worker log stream %s unavailable", stream)
        return
    set_worker_stream(stream)


def connect_celery_signals() -> None:
    from celery.signals import before_task_publish, task_postrun, task_prerun, worker_init

    before_task_publish.connect(_publish_header, weak=False)
    task_prerun.connect(_task_started, weak=False)
    task_postrun.connect(_task_finished, weak=False)
    worker_init.connect(_worker_started, weak=False)
