"""The control plane as an operator uses it: a real server process driven by a real headless
Chromium (Debian's package; Playwright never downloads a browser)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httpx
import pytest

from testing.processes import free_port, manage, own_database, running, server_env

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]


@pytest.fixture
def server(tmp_path):
    """A served, migrated database with tenant `acme`, one key and a superuser `ops`."""
    with own_database(tmp_path) as url:
        env = server_env(
            url, DJANGO_SUPERUSER_PASSWORD="correct-horse-9", STATIC_ROOT=str(tmp_path / "static")
        )
        manage(env, "migrate", "--no-input", "-v0")
        manage(env, "collectstatic", "--no-input", "-v0")  # as the production image does
        manage(env, "createtenant", "Acme")
        manage(env, "createsuperuser", "--no-input", "--username", "ops", "--email", "o@x.io")
        existing = manage(env, "createapikey", "--tenant", "acme", "--name", "existing")
        port = free_port()
        cmd = [sys.executable, "manage.py", "serve", "--port", str(port)]
        with running(cmd, env, port=port) as base:
            yield base, existing


@pytest.fixture
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(base_url=server[0])
        page.goto("/admin/login/")
        page.fill("#id_username", "ops")
        page.fill("#id_password", "correct-horse-9")
        page.click("input[type=submit]")
        page.wait_for_url("**/admin/")
        yield page
        browser.close()


def _status(base: str, raw: str) -> int:
    return httpx.get(f"{base}/v1/tenant", headers={"X-API-Key": raw}).status_code


def test_an_operator_creates_a_key_sees_it_once_then_revokes_it(page, server, tmp_path):
    base, _ = server
    page.goto("/admin/tenants/tenantapikey/add/")
    page.select_option("#id_tenant", label="acme")
    page.fill("#id_name", "from the admin")
    page.fill("#id_scopes", '["infer"]')
    page.click("input[name=_save]")
    message = page.locator(".messagelist").inner_text()
    raw = re.search(r"sk_live_\S+", message).group(0)
    page.screenshot(path=str(tmp_path / "key-created.png"))
    assert _status(base, raw) == 200
    assert page.content().count(raw) == 1  # in the message, and nowhere else
    page.reload()
    assert raw not in page.content()

    prefix = raw.removeprefix("sk_live_").split(".")[0]
    assert f"sk_live_{prefix}…" in page.content()
    row = page.locator("tr", has_text="from the admin")
    row.locator("input[name=_selected_action]").check()
    page.select_option("select[name=action]", "revoke_keys")
    page.click("button[name=index]")
    assert "Revoked 1 key(s)." in page.locator(".messagelist").inner_text()
    assert _status(base, raw) == 401


def test_the_tenant_page_lists_its_keys_without_secrets(page, server):
    _, existing = server
    page.goto("/admin/tenants/tenant/")
    page.click("text=acme")
    page.wait_for_url("**/change/")
    assert page.locator("link[href*='/static/admin/css/base']").count() == 1
    assert page.evaluate("getComputedStyle(document.body).fontFamily") != "Times New Roman"
    body = page.content()
    assert existing.removeprefix("sk_live_").split(".")[0] in body
    assert existing not in body
