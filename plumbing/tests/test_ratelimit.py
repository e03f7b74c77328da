from __future__ import annotations

import logging
import threading

import pytest

from tenants.tests.factories import make_key

pytestmark = pytest.mark.django_db

DEAD_REDIS = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
        "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
    }
}


def test_it_limits_each_client_ip_on_every_api_path(client, settings):
    settings.RATELIMIT_IP_RATE = "3/h"
    for _ in range(3):
        assert client.get("/v1/tenant").status_code == 401
    response = client.get("/v1/no-such-path")
    assert response.status_code == 429
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"] == "urn:sluice:problem:rate-limited"
    assert int(response["Retry-After"]) > 0
    assert response["RateLimit-Limit"] == "3"
    assert response["RateLimit-Remaining"] == "0"
    # another address has its own budget
    assert client.get("/v1/tenant", REMOTE_ADDR="10.9.9.9").status_code == 401


def test_it_does_not_limit_non_api_paths(client, settings):
    settings.RATELIMIT_IP_RATE = "1/h"
    for _ in range(3):
        assert client.get("/healthz").status_code == 200


def test_it_sends_the_tightest_limit_in_ratelimit_headers(api, tenant, settings):
    settings.RATELIMIT_IP_RATE = "1000/h"
    tenant.requests_per_minute = 5
    tenant.save()
    response = api.get("/v1/tenant")
    assert response.status_code == 200
    assert response["RateLimit-Limit"] == "5"
    assert response["RateLimit-Remaining"] == "4"
    assert 0 < int(response["RateLimit-Reset"]) <= 60


def test_it_limits_a_tenant_across_its_keys(tenant, client_for):
    tenant.requests_per_minute = 2
    tenant.save()
    a, b = client_for(make_key(tenant)[1]), client_for(make_key(tenant)[1])
    assert a.get("/v1/tenant").status_code == 200
    assert b.get("/v1/tenant").status_code == 200
    response = a.get("/v1/tenant")
    assert response.status_code == 429
    assert response.json()["detail"].startswith("Tenant limit of 2/min.")
    assert response["RateLimit-Remaining"] == "0"
    assert int(response["Retry-After"]) > 0


def test_it_limits_a_key_with_its_own_rate(tenant, client_for):
    limited = client_for(make_key(tenant, requests_per_minute=1)[1])
    free = client_for(make_key(tenant)[1])
    assert limited.get("/v1/tenant").status_code == 200
    assert limited.get("/v1/tenant").status_code == 429
    assert free.get("/v1/tenant").status_code == 200


def test_it_enforces_the_monthly_quota(api, tenant):
    tenant.monthly_request_quota = 2
    tenant.save()
    assert api.get("/v1/tenant").status_code == 200
    assert api.get("/v1/tenant").status_code == 200
    response = api.get("/v1/tenant")
    assert response.status_code == 429
    assert response.json()["type"] == "urn:sluice:problem:quota-exceeded"
    assert int(response["Retry-After"]) > 0


def test_it_ignores_x_forwarded_for_unless_a_proxy_is_trusted(client, settings):
    settings.RATELIMIT_IP_RATE = "1/h"
    assert client.get("/v1/tenant", HTTP_X_FORWARDED_FOR="1.1.1.1").status_code == 401
    assert client.get("/v1/tenant", HTTP_X_FORWARDED_FOR="2.2.2.2").status_code == 429
    settings.TRUSTED_PROXY_COUNT = 1
    assert client.get("/v1/tenant", HTTP_X_FORWARDED_FOR="6.6.6.6, 3.3.3.3").status_code == 401
    # the spoofed left-most address does not buy a new budget
    assert client.get("/v1/tenant", HTTP_X_FORWARDED_FOR="7.7.7.7, 3.3.3.3").status_code == 429


def test_it_fails_open_when_redis_is_down(api, settings, caplog):
    settings.CACHES = DEAD_REDIS
    settings.RATELIMIT_FAIL_OPEN = True
    with caplog.at_level(logging.ERROR):
        response = api.get("/v1/tenant")
    assert response.status_code == 200
    assert "RateLimit-Limit" not in response
    assert any("failing open" in r.getMessage() for r in caplog.records)


def test_it_fails_closed_when_configured_and_redis_is_down(api, settings):
    settings.CACHES = DEAD_REDIS
    settings.RATELIMIT_FAIL_OPEN = False
    response = api.get("/v1/tenant")
    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    assert response["Retry-After"] == "5"


def test_it_does_not_bill_the_quota_for_a_refused_request(api, tenant):
    from django.core.cache import cache

    from tenants.limits import quota_counter

    tenant.requests_per_minute = 1
    tenant.monthly_request_quota = 100
    tenant.save()
    assert api.get("/v1/tenant").status_code == 200
    response = api.get("/v1/tenant")
    assert response.status_code == 429
    assert response.json()["detail"].startswith("Tenant limit of 1/min.")
    assert cache.get(quota_counter(tenant.pk).key) == 1


def test_it_counts_all_limits_of_a_request_in_two_redis_commands(tenant, client_for, settings):
    from django.core.cache import caches
    from django.core.cache.backends.redis import RedisCache

    if not isinstance(caches["default"], RedisCache):
        pytest.skip("counts Redis round trips (PostgreSQL + Redis pass)")
    import redis

    tenant.requests_per_minute = 50
    tenant.monthly_request_quota = 1000
    tenant.save()
    client = client_for(make_key(tenant, requests_per_minute=40)[1])
    assert client.get("/v1/tenant").status_code == 200  # the key is cached from now on
    calls: list[str] = []
    real_execute = redis.client.Pipeline.execute
    real_command = redis.Redis.execute_command
    # The request's own commands: a background thread (the log stream's writer) may flush
    # a pipeline of its own meanwhile.
    this_thread = threading.get_ident()

    def execute(self, *args, **kwargs):
        if threading.get_ident() == this_thread:
            calls.append(f"pipeline of {len(self.command_stack)}")
        return real_execute(self, *args, **kwargs)

    def command(self, *args, **kwargs):
        if threading.get_ident() == this_thread:
            calls.append(str(args[0]))
        return real_command(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(redis.client.Pipeline, "execute", execute)
        mp.setattr(redis.Redis, "execute_command", command)
        response = client.get("/v1/tenant")
    assert response.status_code == 200
    # The per-IP counter, then tenant + key + quota: one script each (INCR and EXPIRE NX per
    # counter inside it), no other command.
    assert calls == ["EVALSHA", "EVALSHA"]
    assert response["RateLimit-Limit"] == "40"
    assert response["RateLimit-Remaining"] == "38"
    # Every counter expires: its window's (plus django-ratelimit's fudge), or the month's.
    cache = caches["default"]
    store = cache._cache.get_client(write=True)
    patterns = [cache.make_key("rl:*"), cache.make_key(f"quota:{tenant.pk}:*")]
    names = [name for pattern in patterns for name in store.scan_iter(match=pattern)]
    assert len(names) >= 4 and all(store.ttl(name) > 0 for name in names)


def test_it_fails_open_on_the_quota_when_redis_is_down_even_if_limits_fail_closed(
    api, tenant, settings
):
    from django.test import RequestFactory

    from plumbing import ratelimit
    from tenants.limits import quota_counter

    settings.CACHES = DEAD_REDIS
    settings.RATELIMIT_FAIL_OPEN = False
    request = RequestFactory().get("/v1/tenant")
    usages, counts = ratelimit.hit_many(request, [], counters=[quota_counter(tenant.pk)])
    assert usages == [] and counts == [None]
    with pytest.raises(ratelimit.LimiterUnavailable):
        ratelimit.hit_many(request, [ratelimit.Check("tenant", "1", "5/m")])


def test_a_batch_is_counted_as_if_each_request_had_counted_alone(tenant, settings):
    from django.core.cache import caches
    from django.core.cache.backends.redis import RedisCache

    from plumbing import ratelimit
    from tenants.limits import PlanTicket, settle

    if not isinstance(caches["default"], RedisCache):
        pytest.skip("batches are counted on Redis (PostgreSQL + Redis pass)")
    tenant.monthly_request_quota = 100
    tenant.save()
    ip_a = ratelimit.Check("ip", "10.7.0.1", "3/h")
    ip_b = ratelimit.Check("ip", "10.7.0.2", "3/h")
    per_tenant = ratelimit.Check("tenant", str(tenant.pk), "4/m")
    quota = ratelimit.Counter(key=f"quota:{tenant.pk}:batch-test", timeout=3600)
    requests = [([ip_a, per_tenant], [quota]) for _ in range(3)] + [([ip_b, per_tenant], [quota])]
    requests.append(([ip_a, per_tenant], [quota]))
    counted = ratelimit.hit_batch(requests)
    ip_counts = [usages[0].limit - usages[0].remaining for usages, _ in counted]
    assert [usages[0].limited for usages, _ in counted] == [False, False, False, False, True]
    assert ip_counts[:4] == [1, 2, 3, 1]
    assert [usages[1].limited for usages, _ in counted] == [False, False, False, False, True]
    assert [used[0] for _, used in counted] == [1, 2, 3, 4, 5]
    # The same decisions as enforce_plan, and the refused request is taken back from the quota.
    tickets = [
        PlanTicket(tenant, [ip_a, per_tenant], [quota], ip=ip_a),
        PlanTicket(tenant, [ip_b, per_tenant], [quota], ip=ip_b),
    ]
    settle(tickets)
    assert tickets[0].refusal is not None and "address" in str(tickets[0].refusal.detail)
    assert tickets[1].refusal is not None and "Tenant limit of 4/min" in str(
        tickets[1].refusal.detail
    )
    assert all(t.counted and t.usages for t in tickets)
    assert caches["default"].get(quota.key) == 5  # 5 + 2 counted, the 2 refused taken back


def test_the_counters_cache_is_one_per_thread_also_across_an_event_loops_requests(
    settings,
) -> None:
    """Django hands each async context a cache backend of its own; on the unary server's loop
    every request is one, and a new Redis backend is a new connection. The counters' backend
    is the thread's, and a settings change builds it anew."""
    import asyncio

    from plumbing.ratelimit import counter_cache

    async def one() -> object:
        await asyncio.sleep(0)
        return counter_cache()

    async def many() -> list[object]:
        return list(await asyncio.gather(*(one() for _ in range(5))))

    backends = asyncio.run(many())
    assert all(b is backends[0] for b in backends)
    assert counter_cache() is backends[0]  # the same thread
    other: list[object] = []
    thread = threading.Thread(target=lambda: other.append(counter_cache()))
    thread.start()
    thread.join()
    assert other[0] is not backends[0]
    settings.RATELIMIT_USE_CACHE = settings.RATELIMIT_USE_CACHE  # any change: built anew
    assert counter_cache() is not backends[0]
