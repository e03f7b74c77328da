"""Concurrent routing changes (the races the model methods lock against). PostgreSQL only:
SQLite serialises every write anyway."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from inference.models import Model, ModelVersion
from inference.tests.conftest import make_version

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _postgres_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks are exercised on PostgreSQL")


def _together(*calls) -> list[BaseException]:
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def run(call) -> None:
        barrier.wait()
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return errors


def test_it_leaves_one_stable_version_after_concurrent_promotions() -> None:
    versions = [make_version(version=str(n)) for n in range(1, 5)]
    model = versions[0].model
    errors = _together(
        *[lambda v=v: Model.objects.get(pk=model.pk).promote(v, actor="ops") for v in versions]
    )
    assert errors == []
    model.refresh_from_db()
    weights = dict(
        ModelVersion.objects.filter(model=model).values_list("version", "traffic_weight")
    )
    assert sorted(weights.values()) == [0, 0, 0, 100]
    assert weights[model.stable_version.version] == 100


def test_it_makes_exactly_one_first_activation_stable() -> None:
    drafts = [make_version(version=str(n), activate=False) for n in range(1, 5)]
    errors = _together(*[lambda d=d: d.activate(actor="ops") for d in drafts])
    assert errors == []
    model = Model.objects.get(name="doubler")
    weights = list(
        ModelVersion.objects.filter(model=model).values_list("traffic_weight", flat=True)
    )
    assert sorted(weights) == [0, 0, 0, 100]
    assert model.stable_version.traffic_weight == 100
