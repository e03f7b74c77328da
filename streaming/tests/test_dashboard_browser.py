"""The live metrics dashboard in a real headless Chromium (Debian's; Playwright never downloads
a browser) against a real `manage.py serve`: the chart receives live points."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from testing.processes import (
    free_port,
    manage,
    migrate_with_static,
    own_database,
    running,
    server_env,
)

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]


@pytest.fixture
def server(tmp_path):
    with own_database(tmp_path) as url:
        env = server_env(
            url, DJANGO_SUPERUSER_PASSWORD="correct-horse-9", STATIC_ROOT=str(tmp_path / "static")
        )
        migrate_with_static(env)
        manage(env, "createtenant", "Acme", "--rpm", "1000")
        manage(env, "createsuperuser", "--no-input", "--username", "ops", "--email", "o@x.io")
        key = manage(env, "createapikey", "--tenant", "acme")
        port = free_port()
        cmd = [sys.executable, "manage.py", "serve", "--port", str(port)]
        with running(cmd, env, port=port) as base:
            yield base, key


def test_the_dashboard_charts_live_metrics(server, tmp_path):
    from playwright.sync_api import sync_playwright

    base, key = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-quic",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(base_url=base)
            page.goto("/admin/login/?next=/admin/")
            page.fill("#id_username", "ops")
            page.fill("#id_password", "correct-horse-9")
            page.click("input[type=submit]")
            page.wait_for_url("**/admin/")
            page.click("text=Live metrics")
            page.wait_for_url("**/admin/metrics/")
            page.wait_for_function("window.sluiceMetrics && window.sluiceMetrics.received >= 2")
            before = page.evaluate("window.sluiceMetrics.points.length")
            with httpx.Client(base_url=base, headers={"X-API-Key": key}) as client:
                for _ in range(30):
                    assert client.get("/v1/tenant").status_code == 200
            # Live points keep arriving, and one of them counts the requests just made.
            page.wait_for_function(
                f"window.sluiceMetrics.points.slice({before}).some(p => p.requests_per_s >= 5)",
                timeout=15_000,
            )
            latest = page.evaluate("window.sluiceMetrics.points.at(-1)")
            assert {"queue_depth", "latency_ms", "active_streams"} <= set(latest)
            inked = page.evaluate(
                """() => {
                  const c = document.getElementById('chart-requests');
                  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
                  return n;
                }"""
            )
            assert inked > 100  # axes and a line were drawn
            assert "Live:" in page.inner_text("#sluice-status")
            page.screenshot(path=str(tmp_path / "metrics.png"))
        finally:
            browser.close()
