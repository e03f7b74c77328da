"""Sluice settings: one module, driven by the environment (12-factor).

With nothing set this is the *embedded default*: SQLite, in-memory channel layer, local-memory
cache, and Celery on the in-process memory transport. Setting ``DATABASE_URL`` and ``REDIS_URL``
switches to PostgreSQL and Redis; ``EMBEDDED`` below is the one switch every such difference
hangs on. Every variable read here is listed in the README's configuration table.
Secrets may be given as ``NAME_FILE`` (a path whose content is the value).
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
# Development settings kept in a file (``make run`` writes one: DEBUG and a generated
# SECRET_KEY), so every manage.py command works without exports. Variables already in the
# environment win; ENV_FILE names another file, or none when empty (scripts/check_deploy.py).
ENV_FILE = os.environ.get("ENV_FILE", str(BASE_DIR / ".env"))
if ENV_FILE and os.path.isfile(ENV_FILE):
    environ.Env.read_env(ENV_FILE)
env = environ.FileAwareEnv()

DEBUG = env.bool("DEBUG", default=False)
if DEBUG:
    SECRET_KEY = env.str("SECRET_KEY", default="insecure-development-only-secret-key-0123456789")
else:
    try:
        SECRET_KEY = env.str("SECRET_KEY")
    except ImproperlyConfigured:
        # One line, not a traceback through Django's start-up, for manage.py and every server
        # (SystemExit prints its message and ends the process with status 1).
        sys.exit(
            "Sluice cannot start: SECRET_KEY (or SECRET_KEY_FILE) is not set; "
            "set it in the environment or .env, or DEBUG=true for local development."
        )

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

REDIS_URL = env.str("REDIS_URL", default="")
EMBEDDED = not REDIS_URL
# Separates this deployment's (or this test run's) keys from anything else in the same Redis.
REDIS_KEY_PREFIX = env.str("REDIS_KEY_PREFIX", default="sluice")

INSTALLED_APPS = [
    # First: its runserver (daphne's, saying it starts no worker) wins over daphne's own.
    "plumbing",  # the library every app shares (problem+json, rate limits, metrics, ...)
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "rest_framework_api_key",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "tenants",
    "inference",
    "streaming",
    "jobs",
]

MIDDLEWARE = [
    "plumbing.middleware.ProxyHeadersMiddleware",
    "plumbing.middleware.RequestLogMiddleware",
    "streaming.middleware.RequestLogStreamMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "plumbing.middleware.ApiBodyLimitMiddleware",
    "plumbing.middleware.ApiIpRateLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "plumbing.middleware.StreamReleasesDatabaseMiddleware",
    # Last, so its process_exception is the first to see a view's error.
    "plumbing.middleware.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Data -------------------------------------------------------------------------------------
# PostgreSQL connections one process holds at most (0: no pool; see below).
DATABASE_POOL_MAX_SIZE = env.int("DATABASE_POOL_MAX_SIZE", default=0)
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'var' / 'db.sqlite3'}")
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the embedded server read while a write is in flight.
    DATABASES["default"].setdefault("OPTIONS", {})["init_command"] = "PRAGMA journal_mode=WAL;"
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
else:
    # A database that does not answer costs a request this long, not the OS's minutes.
    DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = env.int(
        "DATABASE_CONNECT_TIMEOUT", default=5
    )
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # The connection budget (docs/deployment.md): a process with a pool holds at most
    # DATABASE_POOL_MAX_SIZE connections whatever its threads (an ASGI server runs each
    # request's sync code on a thread of its own), and a request waits DATABASE_POOL_TIMEOUT
    # for one before its 503. Without a pool each thread keeps its own for CONN_MAX_AGE.
    if DATABASE_POOL_MAX_SIZE > 0:
        DATABASES["default"]["CONN_MAX_AGE"] = 0  # a pool lends connections per request
        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": min(2, DATABASE_POOL_MAX_SIZE),
            "max_size": DATABASE_POOL_MAX_SIZE,
            "timeout": env.float("DATABASE_POOL_TIMEOUT", default=3.0),
        }
    else:
        DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
# A request that found the database unavailable is answered 503 with this Retry-After.
DATABASE_RETRY_AFTER_SECONDS = env.int("DATABASE_RETRY_AFTER_SECONDS", default=5)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Short socket timeouts: a dead Redis must cost a request milliseconds, not the default minutes.
REDIS_SOCKET_TIMEOUT = env.float("REDIS_SOCKET_TIMEOUT", default=0.5)
CACHES: dict[str, dict[str, Any]]
CHANNEL_LAYERS: dict[str, dict[str, Any]]
if EMBEDDED:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": REDIS_KEY_PREFIX,
            "OPTIONS": {
                "socket_connect_timeout": REDIS_SOCKET_TIMEOUT,
                "socket_timeout": REDIS_SOCKET_TIMEOUT,
            },
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{REDIS_KEY_PREFIX}:asgi"},
        }
    }

# --- Celery -----------------------------------------------------------------------------------
# The embedded default's broker is a spool of files here that every process of the checkout
# shares (plumbing/spool.py): a job a manage.py command queues reaches `manage.py serve`, whose
# own work stays on the in-process memory transport. Empty: each process has its own memory
# broker, reached by nothing else (the test suite).
EMBEDDED_BROKER_DIR = env.str("EMBEDDED_BROKER_DIR", default=str(BASE_DIR / "var" / "broker"))
CELERY_BROKER_URL = env.str(
    "CELERY_BROKER_URL",
    default=REDIS_URL or ("filesystem://" if EMBEDDED_BROKER_DIR else "memory://localhost/"),
)
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT = "plumbing.redis_wire:Transport"  # one Redis client per channel
elif CELERY_BROKER_URL.startswith("filesystem://"):
    if not EMBEDDED_BROKER_DIR:
        raise ImproperlyConfigured("A filesystem:// broker needs EMBEDDED_BROKER_DIR.")
    CELERY_BROKER_TRANSPORT = "plumbing.spool:Transport"
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Results travel through the stream log, never the Celery result backend.
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = env.int("CELERY_WORKER_PREFETCH_MULTIPLIER", default=1)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=300)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 10
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
WORKER_METRICS_PORT = env.int("WORKER_METRICS_PORT", default=9808)
# Workers announce the queues they consume (plumbing/presence.py): renewed every interval, lapsed
# after the TTL (a killed worker), read by web processes at most once per cache period per queue.
WORKER_PRESENCE_INTERVAL_SECONDS = env.float("WORKER_PRESENCE_INTERVAL_SECONDS", default=2.0)
WORKER_PRESENCE_TTL_SECONDS = env.float("WORKER_PRESENCE_TTL_SECONDS", default=6.0)
WORKER_PRESENCE_CACHE_SECONDS = env.float("WORKER_PRESENCE_CACHE_SECONDS", default=1.0)
# Workers log through LOGGING below (JSON in production), not Celery's own text handler.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Must exceed the task time limit, or a long task is redelivered while it still runs.
    "visibility_timeout": CELERY_TASK_TIME_LIMIT * 2,
    "global_keyprefix": f"{REDIS_KEY_PREFIX}:celery:",
}
if CELERY_BROKER_URL.startswith("memory://"):
    # The memory transport polls; its 1 s default would add up to a second to every
    # inference request of the embedded server.
    CELERY_BROKER_TRANSPORT_OPTIONS["polling_interval"] = 0.01
elif CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS.update(
        data_folder_in=f"{EMBEDDED_BROKER_DIR}/queue",
        data_folder_out=f"{EMBEDDED_BROKER_DIR}/queue",
        control_folder=f"{EMBEDDED_BROKER_DIR}/control",
        # A command's message waits at most this long for the server's bridge to see it.
        polling_interval=0.05,
    )

# --- Inference --------------------------------------------------------------------------------
# Queues a model version may name; the embedded worker consumes "celery" plus all of these.
INFERENCE_QUEUES = env.list("INFERENCE_QUEUES", default=["cpu", "gpu"])
# Models one worker process keeps loaded (least recently used are closed first).
INFERENCE_CACHE_MAX_MODELS = env.int("INFERENCE_CACHE_MAX_MODELS", default=8)
# A starting `celery worker` loads and warms the active versions of its queues at once.
INFERENCE_PRELOAD = env.bool("INFERENCE_PRELOAD", default=True)
# Requests in flight per queue before the API answers 503 at once ("queue=bound,..." overrides).
INFERENCE_QUEUE_BOUND = env.int("INFERENCE_QUEUE_BOUND", default=256)
INFERENCE_QUEUE_BOUNDS = env.dict("INFERENCE_QUEUE_BOUNDS", cast={"value": int}, default={})
INFERENCE_RETRY_AFTER_SECONDS = env.int("INFERENCE_RETRY_AFTER_SECONDS", default=1)
INFERENCE_DEFAULT_TIMEOUT_MS = env.int("INFERENCE_DEFAULT_TIMEOUT_MS", default=10_000)
INFERENCE_MAX_TIMEOUT_MS = env.int("INFERENCE_MAX_TIMEOUT_MS", default=60_000)
# A request whose model is loading when its deadline comes waits this much longer for the load
# (then 503 model-loading with Retry-After), never a 504 because of the load (docs/inference.md).
INFERENCE_LOAD_ALLOWANCE_SECONDS = env.float("INFERENCE_LOAD_ALLOWANCE_SECONDS", default=30.0)
# Circuit breaker per version: opens after this many consecutive failures, probes after cooldown.
INFERENCE_BREAKER_FAILURES = env.int("INFERENCE_BREAKER_FAILURES", default=5)
INFERENCE_BREAKER_COOLDOWN_SECONDS = env.float("INFERENCE_BREAKER_COOLDOWN_SECONDS", default=30.0)
# Failures on one request's input open it only when this many callers (tenants) failed.
INFERENCE_BREAKER_CALLERS = env.int("INFERENCE_BREAKER_CALLERS", default=2)
# The window of each version's error rate and p99 in /v1/models, listmodels, admin, metrics.
INFERENCE_HEALTH_WINDOW_SECONDS = env.int("INFERENCE_HEALTH_WINDOW_SECONDS", default=300)
INFERENCE_REPLY_TTL_SECONDS = env.int("INFERENCE_REPLY_TTL_SECONDS", default=120)
# How long activating a version (or giving it traffic) waits for its check in a worker.
INFERENCE_CHECK_TIMEOUT_SECONDS = env.int("INFERENCE_CHECK_TIMEOUT_SECONDS", default=120)
# How often a web process judges the canaries of the models it routes
# (inference/catalog/canary.py).
INFERENCE_CANARY_INTERVAL_SECONDS = env.float("INFERENCE_CANARY_INTERVAL_SECONDS", default=1.0)
# API keys of remote upstreams (kserve / openai runtimes): every UPSTREAM_KEY_<NAME> (or
# UPSTREAM_KEY_<NAME>_FILE). A version names one in runtime_options.api_key_env, so no key is
# stored in the registry or shown in the admin, and no other variable (SECRET_KEY…) can be named.
INFERENCE_UPSTREAM_KEYS: dict[str, str] = {
    name: env.str(name).strip()  # a secret file's trailing newline is not part of the key
    for name in sorted(
        {n.removesuffix("_FILE") for n in os.environ if n.startswith("UPSTREAM_KEY_")}
    )
}

# Where remote runtimes (kserve, openai) may connect (inference/runtimes/egress.py): host names
# their url may name (ALLOWED_HOSTS patterns: "*" any, ".example.com" the domain and its
# subdomains), and networks allowed although not public: loopback, link-local, private and other
# non-public addresses are refused unless listed (e.g. "10.0.0.0/8,127.0.0.1/32").
INFERENCE_REMOTE_ALLOWED_HOSTS = env.list("INFERENCE_REMOTE_ALLOWED_HOSTS", default=["*"])
INFERENCE_REMOTE_ALLOWED_NETWORKS = env.list("INFERENCE_REMOTE_ALLOWED_NETWORKS", default=[])
for _network in INFERENCE_REMOTE_ALLOWED_NETWORKS:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError as exc:
        raise ImproperlyConfigured(f"INFERENCE_REMOTE_ALLOWED_NETWORKS: {exc}") from exc

# How long a web process trusts its copy of a model's routing table and circuit states (a change
# made in another process is seen within this; the process that made it sees it at once).
INFERENCE_ROUTING_CACHE_SECONDS = env.float("INFERENCE_ROUTING_CACHE_SECONDS", default=1.0)
# The unary server serves well-formed POST /v1/models/{name}/infer requests on its event loop
# without the middleware stack and DRF's request cycle, with the same answers
# (inference/api/frontdoor.py); off, it hands every request to Django's ASGI handler.
if "INFERENCE_EXPRESS_LANE" in os.environ:
    raise ImproperlyConfigured("INFERENCE_EXPRESS_LANE is now INFERENCE_FRONT_DOOR: rename it.")
INFERENCE_FRONT_DOOR = env.bool("INFERENCE_FRONT_DOOR", default=True)
# With Redis, web processes push unary batches onto a Redis list that every inference worker
# serves from lane threads of its own, not as Celery task messages (inference/transport/lane.py).
# Workers serve the lane whatever this says; web processes and workers of one deployment set it
# alike.
INFERENCE_BATCH_LANE = env.bool("INFERENCE_BATCH_LANE", default=True)

# --- Streams ----------------------------------------------------------------------------------
STREAM_MAXLEN = env.int("STREAM_MAXLEN", default=10_000)  # events kept per stream
STREAM_TTL_SECONDS = env.int("STREAM_TTL_SECONDS", default=3600)  # idle streams expire
SSE_HEARTBEAT_SECONDS = env.float("SSE_HEARTBEAT_SECONDS", default=15.0)
WS_AUTH_TIMEOUT_SECONDS = env.float("WS_AUTH_TIMEOUT_SECONDS", default=5.0)
WS_REAUTH_SECONDS = env.float("WS_REAUTH_SECONDS", default=30.0)
WS_MAX_FRAME_BYTES = env.int("WS_MAX_FRAME_BYTES", default=64 * 1024)
# A stream slot is a lease its process renews every third of this; a dead process's slots lapse.
STREAM_SLOT_LEASE_SECONDS = env.float("STREAM_SLOT_LEASE_SECONDS", default=90.0)
# A Celery worker publishes its log lines to the platform stream worker.<hostname> (staff).
LOG_STREAM_WORKERS = env.bool("LOG_STREAM_WORKERS", default=True)
# Each process records its figures and `manage.py serve` samples them to platform.metrics.
METRICS_STREAM_ENABLE = env.bool("METRICS_STREAM_ENABLE", default=True)

# --- Media streams (docs/media.md) -------------------------------------------------------------
# Uploads over these get 413 (API_MAX_BODY_BYTES still applies first to every request body).
MEDIA_MAX_AUDIO_BYTES = env.int("MEDIA_MAX_AUDIO_BYTES", default=10 * 1024 * 1024)
MEDIA_MAX_VIDEO_BYTES = env.int("MEDIA_MAX_VIDEO_BYTES", default=10 * 1024 * 1024)
MEDIA_MAX_TEXT_CHARS = env.int("MEDIA_MAX_TEXT_CHARS", default=10_000)
# Longest audio a WebSocket transcription session may send.
MEDIA_MAX_AUDIO_SECONDS = env.float("MEDIA_MAX_AUDIO_SECONDS", default=600.0)
# A transcription session that receives no audio this long ends (nothing is left running).
MEDIA_SESSION_IDLE_SECONDS = env.float("MEDIA_SESSION_IDLE_SECONDS", default=30.0)
# The worker stops a media stream that runs longer than this (checked between chunks).
MEDIA_MAX_PROCESSING_SECONDS = env.float("MEDIA_MAX_PROCESSING_SECONDS", default=600.0)
# How long a POST waits for the first event (a bad input then still gets a problem+json answer).
MEDIA_FIRST_EVENT_TIMEOUT_SECONDS = env.float("MEDIA_FIRST_EVENT_TIMEOUT_SECONDS", default=30.0)

# --- Auth, API keys, JWT ----------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
API_KEY_CUSTOM_HEADER = "HTTP_X_API_KEY"
# A verified key's row is kept in process memory this long: revocation reaches every process
# within this many seconds (and at once in the process that revoked it).
API_KEY_CACHE_SECONDS = env.float("API_KEY_CACHE_SECONDS", default=5.0)
API_KEY_ROTATION_GRACE_HOURS = env.int("API_KEY_ROTATION_GRACE_HOURS", default=24)
JWT_AUDIENCE = env.str("JWT_AUDIENCE", default="sluice")
JWT_ISSUER = env.str("JWT_ISSUER", default="sluice")
JWT_TTL_SECONDS = env.int("JWT_TTL_SECONDS", default=900)
# "kid=secret,kid2=secret2"; the first is used to sign, all are accepted (rotation).
JWT_SIGNING_KEYS = env.dict("JWT_SIGNING_KEYS", default={"k1": SECRET_KEY})
JWT_ACTIVE_KID = env.str("JWT_ACTIVE_KID", default=next(iter(JWT_SIGNING_KEYS)))
if JWT_ACTIVE_KID not in JWT_SIGNING_KEYS:
    raise ImproperlyConfigured(f"JWT_ACTIVE_KID {JWT_ACTIVE_KID!r} is not in JWT_SIGNING_KEYS")

# --- Rate limits ------------------------------------------------------------------------------
RATELIMIT_ENABLE = env.bool("RATELIMIT_ENABLE", default=True)
RATELIMIT_IP_RATE = env.str("RATELIMIT_IP_RATE", default="100/m")
# True: when the counter store (Redis) is down, requests pass and an error is logged.
RATELIMIT_FAIL_OPEN = env.bool("RATELIMIT_FAIL_OPEN", default=True)
RATELIMIT_USE_CACHE = "default"
# X-Forwarded-For and -Proto are believed only behind proxies that set them: how many proxies
# are in front of us, and the peers (addresses, networks, or "*") allowed to send the headers.
# Servers take the address from the socket; plumbing/net.py alone reads the headers.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
TRUSTED_PROXY_IPS = env.list("TRUSTED_PROXY_IPS", default=["127.0.0.1", "::1"])
for _peer in TRUSTED_PROXY_IPS:
    if _peer != "*":
        try:
            ipaddress.ip_network(_peer)
        except ValueError as exc:
            raise ImproperlyConfigured(f"TRUSTED_PROXY_IPS: {exc}") from exc
API_PATH_PREFIXES = ("/v1/", "/v2/", "/api/")
if EMBEDDED:
    # One process: local memory *is* the shared store.
    SILENCED_SYSTEM_CHECKS = ["django_ratelimit.E003", "django_ratelimit.W001"]
# gunicorn: requests one process serves at once; past it the process's spare threads answer
# 503 + Retry-After at once (plumbing/overload.py). Below GUNICORN_THREADS, and no more than the
# process's database pool: a request past the pool would only wait for a connection.
_threads = env.int("GUNICORN_THREADS", default=32)
WEB_MAX_IN_FLIGHT = env.int(
    "WEB_MAX_IN_FLIGHT",
    default=max(1, min(_threads * 3 // 4, DATABASE_POOL_MAX_SIZE or _threads)),
)
API_MAX_BODY_BYTES = env.int("API_MAX_BODY_BYTES", default=10 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES
# JSON nested deeper than this does not parse (plumbing.untrusted: one policy for every parser).
API_JSON_MAX_DEPTH = env.int("API_JSON_MAX_DEPTH", default=64)

# --- REST framework and OpenAPI ---------------------------------------------------------------
REST_FRAMEWORK: dict[str, Any] = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.authentication.TenantKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["tenants.permissions.IsTenant"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": [
        "plumbing.untrusted.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "plumbing.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_THROTTLE_CLASSES": ["tenants.limits.PlanThrottle"],
    "EXCEPTION_HANDLER": "plumbing.problems.drf_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Sluice API",
    "DESCRIPTION": "Multi-tenant model serving and batch inference.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": r"/v[0-9]",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "streaming.openapi.add_sse_paths",
        "jobs.openapi.add_sse_paths",
        "inference.media.openapi.add_media_paths",
    ],
}

CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
CORS_ALLOW_HEADERS = [
    "authorization",
    "content-type",
    "x-api-key",
    "idempotency-key",
    "last-event-id",
]
CORS_EXPOSE_HEADERS = [
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "retry-after",
    "x-request-id",
]
CORS_URLS_REGEX = r"^/(v1|v2|api)/.*$"

# --- Security (production values unless DEBUG) ------------------------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if TRUSTED_PROXY_COUNT else None
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=not DEBUG)
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG

# --- Static files, i18n -----------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "var" / "static")
MEDIA_ROOT = env.path("MEDIA_ROOT", default=BASE_DIR / "var" / "media")
# Where `manage.py demo` keeps the demo key (mode 600); the home page shows it with DEBUG only.
DEMO_KEY_FILE = env.path("DEMO_KEY_FILE", default=BASE_DIR / "var" / "demo-key")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
# Without collectstatic (quick start, embedded default) serve straight from the apps.
WHITENOISE_USE_FINDERS = DEBUG or EMBEDDED
if WHITENOISE_USE_FINDERS:
    STORAGES["staticfiles"]["BACKEND"] = "django.contrib.staticfiles.storage.StaticFilesStorage"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Logging ----------------------------------------------------------------------------------
LOG_FORMAT = env.str("LOG_FORMAT", default="text" if DEBUG else "json")
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
        "text": {"format": "%(asctime)s %(levelname)-7s [%(request_id)s] %(name)s %(message)s"},
    },
    "filters": {"request_id": {"()": "plumbing.logcontext.RequestIdFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_id"],
        },
        # Lines of work that has a log stream (a request, a job, a worker) also go there.
        "streams": {"class": "streaming.loglines.StreamLogHandler", "filters": ["request_id"]},
    },
    "root": {"handlers": ["console", "streams"], "level": LOG_LEVEL},
    "loggers": {
        # The request log below replaces Django's own per-request lines.
        "django.server": {"level": "WARNING"},
        "django.request": {"level": "ERROR"},
    },
}

# --- Batch jobs -------------------------------------------------------------------------------
JOBS_QUEUE = env.str("JOBS_QUEUE", default="jobs")  # the Celery queue job chunks run on
JOBS_CHUNK_SIZE = env.int("JOBS_CHUNK_SIZE", default=500)  # inputs per message (one batch)
JOBS_WINDOW = env.int("JOBS_WINDOW", default=4)  # chunks of one job on the broker at a time
JOBS_MAX_ATTEMPTS = env.int("JOBS_MAX_ATTEMPTS", default=3)
JOBS_RETRY_BACKOFF_SECONDS = env.float("JOBS_RETRY_BACKOFF_SECONDS", default=2.0)
JOBS_RETRY_BACKOFF_MAX_SECONDS = env.float("JOBS_RETRY_BACKOFF_MAX_SECONDS", default=300.0)
# A claimed task not finished within this is run again; a job without progress this long
# has its outstanding chunks resent by the reconciler.
JOBS_LEASE_SECONDS = env.int("JOBS_LEASE_SECONDS", default=120)
JOBS_RECONCILE_SECONDS = env.float("JOBS_RECONCILE_SECONDS", default=30.0)
JOBS_RESULT_INLINE_MAX_BYTES = env.int("JOBS_RESULT_INLINE_MAX_BYTES", default=16384)
JOBS_MAX_INPUTS = env.int("JOBS_MAX_INPUTS", default=1_000_000)
JOBS_INSERT_BATCH = env.int("JOBS_INSERT_BATCH", default=5000)
JOBS_IDEMPOTENCY_TTL_HOURS = env.int("JOBS_IDEMPOTENCY_TTL_HOURS", default=24)
# A key whose request is still creating its job is leased to that request's process, which
# renews it every third of this; after a crash the key is free again within this many seconds.
JOBS_IDEMPOTENCY_LEASE_SECONDS = env.float("JOBS_IDEMPOTENCY_LEASE_SECONDS", default=10.0)
if JOBS_IDEMPOTENCY_LEASE_SECONDS <= 0:
    raise ImproperlyConfigured("JOBS_IDEMPOTENCY_LEASE_SECONDS must be above 0.")
JOBS_INPUT_PREFIX = env.str("JOBS_INPUT_PREFIX", default="inputs")
# A follower of a job's results (?follow=true) wakes on the job's progress events; when the
# event stream is gone (expired, Redis down) it looks at the database this often instead.
JOBS_FOLLOW_POLL_SECONDS = env.float("JOBS_FOLLOW_POLL_SECONDS", default=1.0)
CELERY_TASK_ROUTES = {"jobs_*": {"queue": JOBS_QUEUE}}
CELERY_BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    # Expires: a backlog of reconciler runs (workers were down) collapses into the next one.
    "jobs-reconcile": {
        "task": "jobs_reconcile",
        "schedule": JOBS_RECONCILE_SECONDS,
        "options": {"expires": JOBS_RECONCILE_SECONDS},
    },
    # Every model with a canary policy, besides each web process's own watch of what it routes.
    "inference-canary": {
        "task": "inference_canary",
        "schedule": 10.0,
        "options": {"expires": 10.0},
    },
}
# Object storage for artifacts, job inputs and large results: "filesystem" (MEDIA_ROOT) or
# "s3" (django-storages; any S3-compatible endpoint).
STORAGE_BACKEND = env.str("STORAGE_BACKEND", default="filesystem")
if STORAGE_BACKEND == "s3":
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {  # type: ignore[dict-item]
            "bucket_name": env.str("AWS_STORAGE_BUCKET_NAME"),
            "endpoint_url": env.str("AWS_S3_ENDPOINT_URL", default="") or None,
            "region_name": env.str("AWS_S3_REGION_NAME", default="") or None,
            "access_key": env.str("AWS_ACCESS_KEY_ID", default="") or None,
            "secret_key": env.str("AWS_SECRET_ACCESS_KEY", default="") or None,
            "file_overwrite": True,
        },
    }
elif STORAGE_BACKEND != "filesystem":
    raise ImproperlyConfigured(f"STORAGE_BACKEND must be filesystem or s3, not {STORAGE_BACKEND!r}")
