"""What the remote runtimes (``kserve``, ``openai``) share: their common options, one pooled
HTTP client per loaded version, retries with exponential backoff and full jitter, and a
circuit breaker per upstream.

``httpx`` and ``tenacity`` are imported inside functions only, so a process without them shows
remote versions "unavailable" with the install hint instead of failing to start.

Retries (tenacity): connect errors, a connection dropped before any answer, 5xx and 429 are
retried up to ``retries`` times; the wait before retry *n* is uniform in
``[0, min(backoff_max_s, backoff_initial_s * 2**(n-1))]`` ("full jitter"), or the upstream's
``Retry-After`` when that is longer; no retry starts past ``retry_budget_s`` from the first
attempt. A read timeout is not retried: the upstream is slow, and a second copy of the work
would only add to its load.

Circuit breaker: :class:`inference.rules.breaker.CircuitBreaker` (shared cache state, one
half-open probe across processes), keyed by the upstream's base URL, so every version that calls the
same server shares it. Every attempt counts: connect errors, timeouts and 5xx are failures,
any other answer is a success (the upstream is there), 429 counts neither way.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.conf import settings

from inference.rules.breaker import CircuitBreaker
from inference.runtimes import egress
from inference.runtimes.base import (
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from plumbing.metrics import UPSTREAM_CALLS, UPSTREAM_DURATION

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

REMOTE_HINT = "install with pip install -r requirements-models.txt"
ENGINES: tuple[str, ...] = ("httpx", "tenacity")
# Option names that would put a secret in the registry (shown in the admin): refused.
_SECRET_WORDS = ("password", "secret", "token", "authorization", "credential")
_SECRET_NAMES = {"api_key", "apikey", "key", "headers", "auth"}
_KEY_ENV = re.compile(r"^UPSTREAM_KEY_[A-Z0-9_]+$")
_HEADER = re.compile(r"^[A-Za-z0-9-]+$")


class InvalidOptions(ValueError):
    """runtime_options that cannot work; the message names the option."""


def _number(options: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidOptions(f"{name} must be a number")
    if not low <= value <= high:
        raise InvalidOptions(f"{name} must be within {low}..{high}, not {value}")
    return float(value)


def _integer(options: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOptions(f"{name} must be an integer")
    if not low <= value <= high:
        raise InvalidOptions(f"{name} must be within {low}..{high}, not {value}")
    return value


def _refuse_secrets(options: dict[str, Any]) -> None:
    for name in options:
        lowered = str(name).lower()
        if lowered in ("api_key_env", "api_key_header"):
            continue
        if lowered in _SECRET_NAMES or any(word in lowered for word in _SECRET_WORDS):
            raise InvalidOptions(
                f"option {name!r} would store a secret in the registry; put the key in an "
                "UPSTREAM_KEY_<NAME> environment variable and name it in api_key_env"
            )


def refused_option(options: dict[str, Any]) -> str | None:
    """Why these options must not be saved at all (a secret in them, or a ``url`` the egress
    allow-list refuses: its host resolved now), or None."""
    try:
        _refuse_secrets(options if isinstance(options, dict) else {})
    except InvalidOptions as exc:
        return str(exc)
    url = options.get("url") if isinstance(options, dict) else None
    return egress.url_refusal(url) if isinstance(url, str) else None


@dataclass(frozen=True)
class RemoteOptions:
    """The options every remote runtime takes (see docs/inference.md for the table)."""

    url: str
    connect_timeout: float
    read_timeout: float
    retries: int
    backoff_initial: float
    backoff_max: float
    retry_budget: float
    breaker_failures: int
    breaker_cooldown: float
    max_connections: int
    api_key_env: str | None
    api_key_header: str

    @classmethod
    def parse(cls, options: dict[str, Any]) -> RemoteOptions:
        """Validated options, or :class:`InvalidOptions` naming the one that is wrong. Cheap
        (no network): the web tier calls it for every routing decision."""
        if not isinstance(options, dict):
            raise InvalidOptions("runtime_options must be an object")
        _refuse_secrets(options)
        url = options.get("url")
        if not isinstance(url, str) or not url:
            raise InvalidOptions("url is required (the upstream's base URL)")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidOptions("url must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise InvalidOptions("url must not carry credentials; use api_key_env")
        if parts.query or parts.fragment:
            raise InvalidOptions("url must be a base URL without query or fragment")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise InvalidOptions(f"url has an invalid port: {exc}") from exc
        refused = egress.host_refusal(parts.hostname)
        if refused:
            raise InvalidOptions(refused)
        key_env = options.get("api_key_env")
        if key_env is not None:
            if not isinstance(key_env, str) or not _KEY_ENV.match(key_env):
                raise InvalidOptions(
                    "api_key_env must name an UPSTREAM_KEY_<NAME> environment variable"
                )
            if key_env not in settings.INFERENCE_UPSTREAM_KEYS:
                raise InvalidOptions(f"{key_env} (api_key_env) is not set in this process")
        header = options.get("api_key_header", "Authorization")
        if not isinstance(header, str) or not _HEADER.match(header):
            raise InvalidOptions("api_key_header must be an HTTP header name")
        backoff_initial = _number(options, "backoff_initial_s", 0.1, 0.0, 60.0)
        backoff_max = _number(options, "backoff_max_s", 2.0, 0.0, 300.0)
        if backoff_max < backoff_initial:
            raise InvalidOptions("backoff_max_s must not be below backoff_initial_s")
        return cls(
            url=url.rstrip("/"),
            connect_timeout=_number(options, "connect_timeout_s", 2.0, 0.01, 120.0),
            read_timeout=_number(options, "read_timeout_s", 30.0, 0.01, 3600.0),
            retries=_integer(options, "retries", 2, 0, 10),
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            retry_budget=_number(options, "retry_budget_s", 10.0, 0.0, 3600.0),
            breaker_failures=_integer(
                options, "breaker_failures", settings.INFERENCE_BREAKER_FAILURES, 1, 1000
            ),
            breaker_cooldown=_number(
                options,
                "breaker_cooldown_s",
                settings.INFERENCE_BREAKER_COOLDOWN_SECONDS,
                0.0,
                86400.0,
            ),
            max_connections=_integer(options, "max_connections", 16, 1, 1024),
            api_key_env=key_env,
            api_key_header=header,
        )

    def auth_headers(self) -> dict[str, str]:
        if not self.api_key_env:
            return {}
        key = settings.INFERENCE_UPSTREAM_KEYS[self.api_key_env]
        if self.api_key_header.lower() == "authorization":
            return {"Authorization": f"Bearer {key}"}
        return {self.api_key_header: key}


class UpstreamBreaker(CircuitBreaker):
    """The router's breaker, on keys of its own: one circuit per upstream base URL."""

    @staticmethod
    def _key(version_id: int, part: str) -> str:
        return f"inference:upstream-cb:{version_id}:{part}"

    @staticmethod
    def id_of(url: str) -> int:
        return int.from_bytes(hashlib.sha256(url.encode()).digest()[:7], "big")


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), None when absent or bad."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _detail(response: httpx.Response) -> str:
    """A short reason from an error answer: its JSON ``error``/``detail``/``message``, or the
    last line of a text body (a traceback's last line names the error)."""
    try:
        body = response.json()
    except ValueError:
        lines = [line.strip() for line in response.text.splitlines() if line.strip()]
        return (lines[-1] if lines else response.reason_phrase)[:300]
    if isinstance(body, dict):
        for name in ("error", "detail", "message"):
            value = body.get(name)
            if isinstance(value, dict):
                value = value.get("message") or value.get("detail") or value
            if value:
                text = value if isinstance(value, str) else json.dumps(value)
                return text[:300]
    return json.dumps(body)[:300]


class Upstream:
    """One upstream seen from one loaded version: a pooled ``httpx.Client`` (keep-alive
    connections reused by every batch and thread), retries and the upstream's breaker.

    ``label`` names the version in messages; the URL stays out of them (they reach API
    clients) and goes to the log instead.
    """

    def __init__(self, options: RemoteOptions, *, label: str, model: str) -> None:
        import httpx

        self.options = options
        self.label = label
        self.model = model
        self.breaker = UpstreamBreaker(
            failures=options.breaker_failures, cooldown=options.breaker_cooldown
        )
        self.circuit = UpstreamBreaker.id_of(options.url)
        self.client = httpx.Client(
            base_url=options.url,
            timeout=httpx.Timeout(
                options.read_timeout, connect=options.connect_timeout, pool=options.read_timeout
            ),
            transport=egress.transport(
                httpx.Limits(
                    max_connections=options.max_connections,
                    max_keepalive_connections=options.max_connections,
                )
            ),
            headers={"Accept": "application/json", **options.auth_headers()},
            follow_redirects=False,
        )

    def close(self) -> None:
        self.client.close()

    # -- one attempt -----------------------------------------------------------------------

    def _count(self, outcome: str, started: float | None = None) -> None:
        """One attempt's outcome (``sluice_upstream_calls_total``) and, when it reached the
        upstream, its time to the answer's headers."""
        if outcome:
            UPSTREAM_CALLS.labels(self.model, outcome).inc()
        if started is not None:
            UPSTREAM_DURATION.labels(self.model).observe(time.perf_counter() - started)

    def _gate(self) -> None:
        if not self.breaker.allow(self.circuit):
            self._count("circuit_open")
            raise UpstreamUnavailable(
                f"unavailable: the upstream of {self.label} is failing (circuit open); "
                f"retry in up to {self.options.breaker_cooldown:g} s",
                retry_after=self.options.breaker_cooldown,
            )

    def _failed(self, error: UpstreamError, *, retryable: bool) -> UpstreamError:
        self.breaker.record(self.circuit, ok=False)
        error.retryable = retryable
        return error

    def _transport_error(self, exc: Exception) -> UpstreamError:
        import httpx

        name = type(exc).__name__
        log.warning("upstream %s of %s: %s: %s", self.options.url, self.label, name, exc)
        if isinstance(exc, httpx.PoolTimeout):
            outcome = "pool_full"
        elif isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            outcome = "unreachable"
        elif isinstance(exc, httpx.TimeoutException):
            outcome = "timeout"
        else:
            outcome = "dropped"
        self._count(outcome)
        if isinstance(exc, httpx.PoolTimeout):
            # Our own pool is saturated: not the upstream's fault, and more waiting won't help.
            error = UpstreamUnavailable(
                f"unavailable: all {self.options.max_connections} connections to the upstream "
                f"of {self.label} are busy"
            )
            error.retryable = False
            return error
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return self._failed(
                UpstreamUnavailable(
                    f"unavailable: the upstream of {self.label} is unreachable ({name})"
                ),
                retryable=True,
            )
        if isinstance(exc, httpx.TimeoutException):
            return self._failed(
                UpstreamTimeout(
                    f"the upstream of {self.label} did not answer within "
                    f"{self.options.read_timeout:g} s ({name})"
                ),
                retryable=False,
            )
        # The connection dropped before any answer (often a keep-alive connection the
        # upstream had just closed): safe to send again.
        return self._failed(
            UpstreamError(f"the upstream of {self.label} dropped the connection ({name})"),
            retryable=True,
        )

    def _refused(self, exc: egress.EgressRefused) -> UpstreamError:
        """No address of the upstream is allowed (the egress allow-list): nothing was sent, so
        neither a retry nor the breaker; the addresses are in the log, not the message."""
        log.warning("upstream %s of %s refused: %s", self.options.url, self.label, exc)
        self._count("refused")
        return egress.EgressRefused(
            f"unavailable: the upstream of {self.label} is at an address that "
            f"{egress.SETTING} does not allow"
        )

    def _status_error(self, response: httpx.Response, started: float) -> UpstreamError | None:
        """None for a 2xx; otherwise the error this answer means (and its breaker outcome)."""
        status = response.status_code
        if status < 300:
            self._count("ok", started)
            self.breaker.record(self.circuit, ok=True)
            return None
        if status == 429:
            self._count("rate_limited", started)
        else:
            self._count("server_error" if status >= 500 else "client_error", started)
        detail = _detail(response)
        after = _retry_after(response)
        log.warning(
            "upstream %s of %s answered %s: %s", self.options.url, self.label, status, detail
        )
        # Its reason is logged above, never put in the error: the error reaches the client.
        message = f"the upstream of {self.label} answered {status}"
        error = self._status_error_of(status, message, after)
        error.upstream_status = status
        return error

    def _status_error_of(self, status: int, message: str, after: float | None) -> UpstreamError:
        if status == 429:
            error: UpstreamError = UpstreamUnavailable(f"unavailable: {message}", retry_after=after)
            error.retryable = True
            return error
        if status >= 500:
            if status == 503:
                error = UpstreamUnavailable(f"unavailable: {message}", retry_after=after)
            elif status == 504:
                error = UpstreamTimeout(message)
            else:
                error = UpstreamError(message)
            return self._failed(error, retryable=True)
        self.breaker.record(self.circuit, ok=True)  # it answered: the upstream is there
        if status == 404:
            error = UpstreamUnavailable(f"unavailable: {message}")
        else:
            error = UpstreamError(message)
        error.retryable = False
        return error

    # -- with retries ----------------------------------------------------------------------

    def _retrying(self) -> Any:
        import tenacity

        opts = self.options
        jitter = tenacity.wait_random_exponential(
            multiplier=opts.backoff_initial, max=opts.backoff_max
        )

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            after = getattr(exc, "retry_after", None) or 0.0
            return max(jitter(state), after)

        def retryable(exc: BaseException) -> bool:
            return bool(getattr(exc, "retryable", False))

        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(opts.retries + 1)
            | tenacity.stop_before_delay(opts.retry_budget),
            wait=wait,
            retry=tenacity.retry_if_exception(retryable),
            reraise=True,
            before_sleep=self._log_retry,
        )

    def _log_retry(self, state: Any) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.info(
            "retrying %s (attempt %s failed: %s) in %.2f s",
            self.label,
            state.attempt_number,
            exc,
            state.upcoming_sleep,
        )

    def request(self, method: str, path: str, *, body: Any = None) -> httpx.Response:
        """One call with retries; the 2xx answer (read) or the :class:`UpstreamError`."""
        import httpx

        for attempt in self._retrying():
            with attempt:
                self._gate()
                started = time.perf_counter()
                try:
                    response = self.client.request(method, path, json=body)
                except httpx.HTTPError as exc:
                    raise self._transport_error(exc) from exc
                except egress.EgressRefused as exc:
                    raise self._refused(exc) from exc
                error = self._status_error(response, started)
                if error is not None:
                    raise error
                return response
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    @contextlib.contextmanager
    def stream(self, method: str, path: str, *, body: Any = None) -> Iterator[httpx.Response]:
        """A streamed call: retried like :meth:`request` until the upstream answers 2xx, never
        after (a retry would repeat what was already passed on). The body is read by the
        caller; a failure while reading counts against the breaker."""
        import httpx

        response: httpx.Response | None = None
        for attempt in self._retrying():
            with attempt:
                self._gate()
                request = self.client.build_request(method, path, json=body)
                started = time.perf_counter()
                try:
                    opened = self.client.send(request, stream=True)
                except httpx.HTTPError as exc:
                    raise self._transport_error(exc) from exc
                except egress.EgressRefused as exc:
                    raise self._refused(exc) from exc
                if opened.status_code >= 300:
                    try:
                        opened.read()
                    except httpx.HTTPError as exc:
                        raise self._transport_error(exc) from exc
                    finally:
                        opened.close()
                    error = self._status_error(opened, started)
                    if error is not None:
                        raise error
                # A 2xx counts (and closes the circuit) once the body is through, below.
                self._count("", started)
                response = opened
        assert response is not None
        try:
            yield response
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        except UpstreamError:  # the upstream reported a failure mid-stream (an error event)
            self._count("server_error")
            self.breaker.record(self.circuit, ok=False)
            raise
        except GeneratorExit:  # the reader stopped early (client gone, cancelled)
            self._count("cancelled")
            raise
        else:
            self._count("ok")
            self.breaker.record(self.circuit, ok=True)
        finally:
            response.close()
