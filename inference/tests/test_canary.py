"""Automatic canary rollback (inference/catalog/canary.py): a canary that breaks its model's policy
goes to weight 0, once, with the figures in its ModelEvent."""

from __future__ import annotations

import logging
import threading

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from prometheus_client import REGISTRY

from inference.catalog import canary, selectors, version_health
from inference.catalog.canary import judge
from inference.catalog.version_health import Window
from inference.models import Model, ModelEvent, ModelVersion
from inference.registry import services
from inference.rules.canary_policy import Policy, PolicyError, policy_parse
from inference.tests.conftest import make_version, wait_for

POLICY = {"window_seconds": 60, "min_requests": 20, "max_error_rate_increase": 0.1}


def _window(requests: int, failures: int = 0, p99: float | None = 10.0) -> Window:
    return Window(
        requests=requests,
        failures=failures,
        input_failures=0,
        error_rate=failures / requests if requests else 0.0,
        p99_ms=p99,
        failing_callers=1 if failures else 0,
        last_error=None,
        last_error_at=None,
    )


def test_a_policy_takes_defaults_and_refuses_nonsense() -> None:
    assert policy_parse({}) is None and policy_parse(None) is None
    assert policy_parse({"min_requests": 50}) == Policy(min_requests=50)
    for bad, message in (
        ({"window": 60}, "unknown canary policy key"),
        ({"window_seconds": 1}, "window_seconds must be within"),
        ({"min_requests": 2.5}, "whole number"),
        ({"max_error_rate_increase": "a lot"}, "must be a number"),
        ({"max_p99_ratio": 0.5}, "at least 1"),
        ([1], "is an object"),
    ):
        with pytest.raises(PolicyError, match=message):
            policy_parse(bad)
    assert policy_parse({"max_p99_ratio": None}) == Policy(max_p99_ratio=None)


def test_it_judges_error_rate_over_the_stable_plus_the_margin_and_p99_ratio() -> None:
    policy = Policy(min_requests=20, max_error_rate_increase=0.1, max_p99_ratio=2)
    assert judge(policy, _window(19, failures=19), _window(100)) == []  # too few to judge
    assert judge(policy, _window(40, failures=4), _window(100, failures=1)) == []  # 0.10 <= 0.11
    [reason] = judge(policy, _window(30, failures=9), _window(100, failures=2))
    assert reason == "error rate 0.300 over 30 requests > stable 0.020 + 0.1"
    [slow] = judge(policy, _window(100, p99=25.0), _window(100, p99=10.0))
    assert slow == "p99 25 ms > 2 x stable 10 ms"
    # A p99 of fewer than 100 requests is their slowest one: latency waits for more.
    assert judge(policy, _window(99, p99=25.0), _window(500, p99=10.0)) == []
    assert judge(policy, _window(100, p99=25.0), _window(50, p99=10.0)) == []
    assert judge(Policy(max_p99_ratio=None), _window(30, p99=99.0), _window(100)) == []


@pytest.fixture
def canaried(db: None) -> tuple[ModelVersion, ModelVersion]:
    stable = make_version()
    candidate = make_version(version="2")
    services.model_set_weights(model=stable.model, weights={"1": 90, "2": 10}, actor="ops")
    services.model_set_canary_policy(model=stable.model, policy=POLICY, actor="ops")
    candidate.refresh_from_db()
    return stable, candidate


def _traffic(version: ModelVersion, ok: int, failed: int = 0) -> None:
    for n in range(ok):
        version_health.record(version.pk, outcome="ok", latency_ms=5.0, caller=f"t{n % 3}")
    for n in range(failed):
        version_health.record(
            version.pk, outcome="engine_error", latency_ms=None, caller=f"t{n % 3}", error="boom"
        )
    version_health.flush()


def _weights() -> dict[str, int]:
    return dict(ModelVersion.objects.values_list("version", "traffic_weight"))


def test_a_canary_with_30_percent_errors_is_rolled_back_with_its_figures(canaried, caplog):
    stable, candidate = canaried
    _traffic(stable, ok=90)
    _traffic(candidate, ok=21, failed=9)
    before = REGISTRY.get_sample_value(
        "sluice_canary_rollbacks_total",
        {"model": "doubler", "version": "2", "reason": "error_rate"},
    )
    with caplog.at_level(logging.WARNING, logger="inference.catalog.canary"):
        assert canary.evaluate(Model.objects.get()) == ["2"]
    assert _weights() == {"1": 100, "2": 0}  # the stable version takes the canary's share
    event = ModelEvent.objects.get(action="canary-rollback")
    assert event.version == candidate and event.actor == "canary-policy"
    assert event.detail["canary_window"]["requests"] == 30
    assert event.detail["canary_window"]["error_rate"] == 0.3
    assert event.detail["stable_window"]["error_rate"] == 0.0
    assert event.detail["weight_cut"] == 10 and event.detail["stable"] == "1"
    assert event.detail["reasons"] == ["error rate 0.300 over 30 requests > stable 0.000 + 0.1"]
    assert "canary doubler:2 rolled back" in caplog.text
    after = REGISTRY.get_sample_value(
        "sluice_canary_rollbacks_total",
        {"model": "doubler", "version": "2", "reason": "error_rate"},
    )
    assert after == (before or 0) + 1
    # Judged again: it takes no traffic any more, so nothing happens twice.
    assert canary.evaluate(Model.objects.get()) == []
    assert ModelEvent.objects.filter(action="canary-rollback").count() == 1


def test_a_healthy_canary_is_kept(canaried) -> None:
    stable, candidate = canaried
    _traffic(stable, ok=90, failed=1)
    _traffic(candidate, ok=30)
    assert canary.evaluate(Model.objects.get()) == []
    assert _weights() == {"1": 90, "2": 10}
    assert not ModelEvent.objects.filter(action="canary-rollback").exists()


def test_a_model_without_a_policy_is_not_judged(canaried) -> None:
    stable, candidate = canaried
    services.model_set_canary_policy(model=stable.model, policy={}, actor="ops")
    _traffic(candidate, ok=0, failed=30)
    assert canary.evaluate_all() == []
    assert _weights() == {"1": 90, "2": 10}


def test_the_stable_version_takes_only_the_failed_canarys_share(db) -> None:
    stable = make_version()
    bad, good = make_version(version="2"), make_version(version="3")
    model = stable.model
    services.model_set_weights(model=model, weights={"1": 80, "2": 10, "3": 10}, actor="ops")
    services.model_set_canary_policy(model=model, policy=POLICY, actor="ops")
    _traffic(stable, ok=80)
    _traffic(bad, ok=10, failed=20)
    _traffic(good, ok=30)
    assert canary.evaluate_all() == ["doubler:2"]
    assert _weights() == {"1": 90, "2": 0, "3": 10}


def test_a_canary_given_traffic_again_after_its_judgement_is_not_cut(canaried) -> None:
    stable, candidate = canaried
    judged_since = candidate.serving_since
    services.model_set_weights(model=stable.model, weights={"2": 0}, actor="ops")
    services.model_set_weights(model=stable.model, weights={"2": 10}, actor="ops")
    figures = {"reasons": ["stale"]}
    assert not stable.model.canary_cut(candidate.pk, judged_since=judged_since, figures=figures)
    assert _weights() == {"1": 90, "2": 10}


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
    reason="row locks are PostgreSQL's",
)
def test_two_processes_judging_at_once_cut_once(canaried) -> None:
    stable, candidate = canaried
    barrier = threading.Barrier(4)
    results: list[bool] = []

    def cut() -> None:
        from django.db import connection

        barrier.wait()
        try:
            model = Model.objects.get(pk=stable.model_id)
            results.append(
                model.canary_cut(candidate.pk, judged_since=candidate.serving_since, figures={})
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=cut) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, False, True]
    assert ModelEvent.objects.filter(action="canary-rollback").count() == 1
    assert _weights() == {"1": 100, "2": 0}


@pytest.mark.django_db(transaction=True)
def test_a_web_process_watches_the_canaries_it_routes(canaried, settings) -> None:
    """Loading a routing table with a canary under a policy starts this process's watcher,
    which cuts the canary within a second or two of the window proving it."""
    stable, candidate = canaried
    settings.INFERENCE_CANARY_INTERVAL_SECONDS = 0.2
    selectors.routing_table_reload("doubler")
    assert "doubler" in canary._watched
    _traffic(stable, ok=50)
    _traffic(candidate, ok=20, failed=10)
    wait_for(
        lambda: ModelEvent.objects.filter(action="canary-rollback").exists(),
        "the watcher's rollback",
    )
    assert _weights() == {"1": 100, "2": 0}


def test_celery_beat_judges_every_model_with_a_policy(canaried, eager) -> None:
    from inference.tasks import inference_canary

    stable, candidate = canaried
    _traffic(stable, ok=50)
    _traffic(candidate, ok=0, failed=25)
    inference_canary.delay()
    assert _weights() == {"1": 100, "2": 0}
    assert "inference-canary" in settings.CELERY_BEAT_SCHEDULE


def test_the_command_shows_sets_and_turns_off_a_policy(db, capsys) -> None:
    make_version()
    call_command("canarypolicy", "doubler")
    assert "canary policy off" in capsys.readouterr().out
    call_command("canarypolicy", "doubler", "--window", "30", "--error-margin", "0.02")
    out = capsys.readouterr().out
    assert '"window_seconds": 30' in out and '"max_error_rate_increase": 0.02' in out
    assert Model.objects.get().canary_policy["min_requests"] == 20  # the default, stored
    with pytest.raises(CommandError, match="window_seconds must be within"):
        call_command("canarypolicy", "doubler", "--window", "1")
    call_command("canarypolicy", "doubler", "--off")
    assert Model.objects.get().canary_policy == {}
    assert ModelEvent.objects.filter(action="canary-policy").count() == 2


def test_the_admin_edits_a_policy_and_refuses_a_bad_one(admin_client, db) -> None:
    model = make_version().model
    url = f"/admin/inference/model/{model.pk}/change/"
    form = {
        "name": "doubler",
        "task": "other",
        "description": "",
        "canary_policy": '{"window_seconds": 2}',
        "versions-TOTAL_FORMS": "1",
        "versions-INITIAL_FORMS": "1",
        "versions-0-id": str(model.versions.get().pk),
        "versions-0-model": str(model.pk),
        "events-TOTAL_FORMS": "0",
        "events-INITIAL_FORMS": "0",
    }
    refused = admin_client.post(url, form)
    assert (
        refused.status_code == 200 and "window_seconds must be within" in refused.content.decode()
    )
    done = admin_client.post(url, {**form, "canary_policy": '{"min_requests": 5}'})
    assert done.status_code == 302, done.content.decode()[:3000]
    model.refresh_from_db()
    assert model.canary_policy == {**Policy().as_dict(), "min_requests": 5}
    assert ModelEvent.objects.get(action="canary-policy").actor == "admin:admin"


def test_a_policy_is_validated_where_it_is_set(db) -> None:
    model = make_version().model
    with pytest.raises(ValidationError, match="max_p99_ratio"):
        services.model_set_canary_policy(model=model, policy={"max_p99_ratio": 0}, actor="ops")
