"""The home page in a real headless Chromium (Debian's; Playwright never downloads a browser)
against a real ``manage.py serve``: its links resolve, its base URLs and curl work with the
demo key, and the key is on the page with DEBUG only."""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], str]]:
    """A migrated database with a superuser and a demo key saved where ``manage.py demo``
    saves it (DEMO_KEY_FILE, here the test's own)."""
    tmp = tmp_path_factory.mktemp("home")
    with own_database(tmp) as url:
        env = server_env(
            url,
            DJANGO_SUPERUSER_PASSWORD="correct-horse-9",
            STATIC_ROOT=str(tmp / "static"),
            DEMO_KEY_FILE=str(tmp / "demo-key"),
        )
        migrate_with_static(env)
        manage(env, "createtenant", "Demo", "--rpm", "1000")
        key = manage(env, "createapikey", "--tenant", "demo", "--scopes", "infer")
        (tmp / "demo-key").write_text(key + "\n")
        manage(env, "createsuperuser", "--no-input", "--username", "ops", "--email", "o@x.io")
        yield env, key


def _serve(env: dict[str, str], **extra: str) -> Any:
    port = free_port()
    cmd = [sys.executable, "manage.py", "serve", "--port", str(port)]
    return running(cmd, {**env, **extra}, port=port)


def _browser(pw: Any) -> Any:
    return pw.chromium.launch(
        executable_path=str(CHROMIUM),
        headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
    )


def test_it_links_the_admin_docs_and_dashboard_and_shows_the_demo_key_in_debug(stack):
    from playwright.sync_api import sync_playwright

    env, key = stack
    with _serve(env, DEBUG="true") as base, sync_playwright() as pw:
        browser = _browser(pw)
        try:
            page = browser.new_page(base_url=base)
            assert page.goto("/").status == 200
            assert page.inner_text("h1") == "Sluice"
            links = page.eval_on_selector_all(
                "#sluice-links a", "els => els.map(e => e.getAttribute('href'))"
            )
            assert {"/admin/", "/api/docs/", "/admin/metrics/"} <= set(links)
            for href in links:
                # Through the browser's own client: redirects are followed (the dashboard is
                # staff-only: its final page is the admin's login) and the schema, a download
                # for a page, is fetched too.
                assert page.request.get(href).status == 200, href
            page.goto("/")
            assert page.inner_text("#demo-key") == key
            # The curl on the page, run as written.
            words = shlex.split(page.inner_text("#demo-curl"))
            assert words[:2] == ["curl", "-H"]
            name, _, value = words[2].partition(": ")
            assert httpx.get(words[3], headers={name: value}, timeout=10).status_code == 200
            # The base URLs, with the key, answer as their protocols say.
            openai = page.inner_text("#openai-base")
            kserve = page.inner_text("#kserve-base")
            assert openai == f"{base}/v1"
            listed = httpx.get(f"{openai}/models", headers={"X-API-Key": key}, timeout=10)
            assert listed.status_code == 200
            assert listed.json()["object"] == "list"
            server = httpx.get(kserve, headers={"X-API-Key": key}, timeout=10)
            assert server.status_code == 200
            assert "name" in server.json()
            # The admin's "View site" comes back here.
            page.goto("/admin/login/?next=/admin/")
            page.fill("#id_username", "ops")
            page.fill("#id_password", "correct-horse-9")
            page.click("input[type=submit]")
            page.wait_for_url("**/admin/")
            page.click("text=View site")
            page.wait_for_url(re.compile(r"^http://127\.0\.0\.1:\d+/$"))
            assert page.inner_text("h1") == "Sluice"
        finally:
            browser.close()


def test_without_debug_it_shows_no_key(stack):
    from playwright.sync_api import sync_playwright

    env, key = stack
    with _serve(env, DEBUG="false") as base, sync_playwright() as pw:
        browser = _browser(pw)
        try:
            page = browser.new_page(base_url=base)
            assert page.goto("/").status == 200
            assert page.inner_text("h1") == "Sluice"
            assert page.locator("#sluice-demo").count() == 0
            assert key not in page.content()
            assert key[:12] not in page.content()
            admin_link = page.get_attribute("#sluice-links a", "href") or ""
            assert page.request.get(admin_link).status == 200
        finally:
            browser.close()
