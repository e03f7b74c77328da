"""Shared fixtures: tenants (owner, other tenant, staff), keys, API clients, isolation of the
cache and the process key cache, and the cross-tenant helper."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from plumbing import presence
from tenants import selectors
from tenants.models import Tenant, TenantAPIKey
from tenants.tests.factories import TenantFactory, make_key


@pytest.fixture(autouse=True)
def _isolated_cache(settings: Any) -> Iterator[None]:
    """Each test counts rate limits in its own cache namespace (never flushes a shared Redis)
    and starts with empty key and worker-presence caches."""
    default = dict(settings.CACHES["default"])
    if "LocMemCache" in default["BACKEND"]:
        default["LOCATION"] = f"test-{uuid.uuid4().hex}"
    else:
        default["KEY_PREFIX"] = f"{settings.REDIS_KEY_PREFIX}:t{uuid.uuid4().hex[:12]}"
    settings.CACHES = {"default": default}
    selectors._cache.clear()
    presence.forget()  # whether a worker serves a queue is each test's own
    presence.forget_claims()  # and the embedded claims (workers, loads) of earlier tests go
    yield
    selectors._cache.clear()
    presence.forget()


@pytest.fixture
def worker_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every queue counts as served by a worker (``config.presence``), for tests of what
    happens to requests queued where nothing answers them (a deadline, a full queue)."""
    monkeypatch.setattr(presence, "_ask", lambda queue: True)
    presence.forget()


@pytest.fixture(scope="session", autouse=True)
def _static_files_from_apps() -> None:
    """In-process tests serve static files from the apps (no collectstatic run); the
    production manifest path is covered by the browser test's real server process."""
    settings.WHITENOISE_USE_FINDERS = True
    settings.STATIC_ROOT = None
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture(scope="session", autouse=True)
def _redis_cleanup() -> Iterator[None]:
    """Delete this run's Redis keys (and only those: they carry REDIS_KEY_PREFIX)."""
    yield
    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        for key in client.scan_iter(match=f"{settings.REDIS_KEY_PREFIX}*", count=1000):
            client.delete(key)
        client.close()


@pytest.fixture
def tenant(db: None) -> Tenant:
    return TenantFactory(slug="acme", name="Acme")


@pytest.fixture
def other_tenant(db: None) -> Tenant:
    return TenantFactory(slug="globex", name="Globex")


@pytest.fixture
def key(tenant: Tenant) -> tuple[TenantAPIKey, str]:
    return make_key(tenant, scopes=["infer", "jobs", "streams", "admin"])


@pytest.fixture
def client_for() -> Callable[[str], APIClient]:
    def build(raw: str) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_X_API_KEY=raw)
        return client

    return build


@pytest.fixture
def api(key: tuple[TenantAPIKey, str], client_for: Callable[[str], APIClient]) -> APIClient:
    """A client authenticated as the owner tenant with every scope."""
    return client_for(key[1])


@pytest.fixture
def other_api(other_tenant: Tenant, client_for: Callable[[str], APIClient]) -> APIClient:
    return client_for(make_key(other_tenant, scopes=["infer", "jobs", "streams", "admin"])[1])


@pytest.fixture
def staff_user(db: None, django_user_model: Any) -> Any:
    """A staff user with no model permissions (``tenants.tests.factories.grant`` adds some)."""
    return django_user_model.objects.create_user("ops", is_staff=True)


@pytest.fixture
def staff_client(staff_user: Any) -> APIClient:
    """A browser session of ``staff_user`` (the browsable API)."""
    client = APIClient()
    client.force_login(staff_user)
    return client


@pytest.fixture
def assert_cross_tenant_404(other_api: APIClient) -> Callable[..., None]:
    """``assert_cross_tenant_404("get", url)``: another tenant asking for the owner's object
    gets a problem+json 404, as if it did not exist."""

    def check(method: str, url: str, data: Any = None) -> None:
        response = getattr(other_api, method)(url, data, format="json")
        assert response.status_code == 404, (method, url, response.status_code)
        assert response["Content-Type"] == "application/problem+json"

    return check
