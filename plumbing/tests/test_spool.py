"""The embedded default's shared spool (plumbing/spool.py): one broker for every process of a
checkout, so a job queued by a manage.py command reaches the running server at once."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from queue import Empty
from typing import Any

import httpx
import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from plumbing.spool import Transport
from testing.processes import ROOT, free_port, manage, own_database, running, server_env


def _connect(folder: Path) -> Any:
    options = {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "control_folder": str(folder / "control"),
        "polling_interval": 0.01,
    }
    return Connection("filesystem://", transport=Transport, transport_options=options)


def _drain(conn: Any, queue: str, n: int) -> list[Any]:
    got: list[Any] = []
    consumer = Consumer(
        conn.default_channel,
        [Queue(queue, routing_key=queue)],
        callbacks=[lambda body, message: (got.append(body), message.ack())],
        accept=["json"],
    )
    with consumer:
        deadline = time.monotonic() + 5
        while len(got) < n and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.2)
    return got


def test_it_delivers_by_queue_name_to_another_connection(tmp_path):
    """The publisher names an exchange the consumer's process never declared (Celery's
    per-queue exchange): the message still reaches the queue its routing key names."""
    with _connect(tmp_path) as sender:
        producer = Producer(sender.default_channel, exchange=Exchange("jobs", type="direct"))
        for n in range(3):
            producer.publish({"n": n}, routing_key="jobs", serializer="json", declare=[])
    with _connect(tmp_path) as receiver:
        assert _drain(receiver, "jobs", 3) == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert list((tmp_path / "queue").iterdir()) == []


def test_it_never_hands_out_a_message_being_written(tmp_path):
    with _connect(tmp_path) as conn:
        channel = conn.default_channel
        queue = tmp_path / "queue"
        (queue / "000000000000001_x.jobs.msg.writing").write_text('{"half": ')
        with pytest.raises(Empty):
            channel._get("jobs")
        assert channel._size("jobs") == 0


def test_a_message_goes_to_one_consumer_only(tmp_path):
    with _connect(tmp_path) as sender:
        Producer(sender.default_channel).publish(
            {"once": True}, routing_key="jobs", serializer="json", declare=[]
        )
    with _connect(tmp_path) as first, _connect(tmp_path) as second:
        taken = first.default_channel._get("jobs")
        assert json.loads(json.dumps(taken))["headers"] is not None
        with pytest.raises(Empty):
            second.default_channel._get("jobs")


@pytest.mark.e2e
@pytest.mark.django_db
def test_a_job_submitted_without_follow_finishes_on_the_running_server(tmp_path):
    """``manage.py submitjob`` (no --follow) in another process, against a running
    ``manage.py serve`` of the embedded default: the server's worker runs it at once."""
    with own_database(tmp_path) as url:
        if not url.startswith("sqlite"):
            pytest.skip("the embedded default (the PostgreSQL + Redis pass has a real broker)")
        env = server_env(url, EMBEDDED_BROKER_DIR=str(tmp_path / "broker"))
        env.pop("CELERY_BROKER_URL", None)
        manage(env, "migrate", "--no-input", "-v0")
        key = manage(env, "demo", "--key-file", str(tmp_path / "key"))
        source = tmp_path / "in.jsonl"
        source.write_text("".join(json.dumps({"text": f"good {n}"}) + "\n" for n in range(10)))
        port = free_port()
        cmd = [sys.executable, "manage.py", "serve", "--port", str(port)]
        with (
            running(cmd, env, port=port, timeout=60) as base,
            httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=10) as client,
        ):
            submitted = subprocess.run(
                [sys.executable, "manage.py", "submitjob", str(source), "--model", "sentiment"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            queued = time.monotonic()
            job_id = submitted.stdout.strip()

            def status() -> str:
                answer = client.get(f"/v1/jobs/{job_id}")
                assert answer.status_code == 200, answer.text
                return str(answer.json()["status"])

            # Every 0.25 s: well inside the per-address limit (100/min) over the 15 s.
            while (now := status()) in ("queued", "running"):
                assert time.monotonic() - queued < 15, "the job waits on another broker"
                time.sleep(0.25)
            assert now == "succeeded"
            assert client.get(f"/v1/jobs/{job_id}").json()["succeeded"] == 10
        assert list((tmp_path / "broker" / "queue").iterdir()) == []


def test_the_serving_process_keeps_its_own_work_on_the_memory_transport(tmp_path):
    """A process that starts the in-process worker publishes and consumes in memory (no file
    and no poll of the spool on the unary path) and bridges the spool; run in a process of
    its own, since it changes the Celery app's broker."""
    code = (
        "import django; django.setup()\n"
        "from config.celery import app\n"
        "from plumbing.embedded import _keep_own_work_in_process\n"
        "assert app.conf.broker_url == 'filesystem://'\n"
        "bridge = _keep_own_work_in_process(['jobs'])\n"
        "for conn in (app.connection_for_read(), app.connection_for_write()):\n"
        "    print(type(conn.transport).__module__, conn.transport.polling_interval)\n"
        "print(bridge.options['data_folder_in'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CELERY_BROKER_URL"}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        EMBEDDED_BROKER_DIR=str(tmp_path / "broker"),
        ENV_FILE="",
    )
    env.pop("REDIS_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "kombu.transport.memory 0.01",
        "kombu.transport.memory 0.01",
        str(tmp_path / "broker" / "queue"),
    ]
