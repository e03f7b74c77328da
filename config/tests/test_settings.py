from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _settings_import(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG")}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-c", "import config.settings"],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_settings_pass_the_deploy_checklist():
    result = subprocess.run(
        [sys.executable, "scripts/check_deploy.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_it_refuses_to_start_in_production_without_a_secret_key():
    result = _settings_import(DEBUG="false")
    assert result.returncode != 0
    assert "SECRET_KEY (or SECRET_KEY_FILE) must be set" in result.stderr


def test_it_reads_secrets_from_files(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-a-file-" + "x" * 40)
    code = "import config.settings as s; print(s.SECRET_KEY)"
    clean = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG")}
    clean["SECRET_KEY_FILE"] = str(secret)
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == secret.read_text()


def test_it_rejects_an_unknown_active_jwt_kid():
    result = _settings_import(DEBUG="true", JWT_SIGNING_KEYS="a=1", JWT_ACTIVE_KID="b")
    assert result.returncode != 0
    assert "JWT_ACTIVE_KID" in result.stderr


def test_it_rejects_a_malformed_integer_setting():
    result = _settings_import(DEBUG="true", TRUSTED_PROXY_COUNT="two")
    assert result.returncode != 0
    assert "TRUSTED_PROXY_COUNT" in result.stderr or "invalid literal" in result.stderr


def test_it_rejects_a_trusted_proxy_that_is_not_an_address_or_network():
    result = _settings_import(DEBUG="true", TRUSTED_PROXY_IPS="10.0.0.0/8,nginx")
    assert result.returncode != 0
    assert "TRUSTED_PROXY_IPS" in result.stderr


def test_the_old_name_of_the_front_door_switch_names_the_new_one():
    result = _settings_import(DEBUG="true", INFERENCE_EXPRESS_LANE="false")
    assert result.returncode != 0
    assert "INFERENCE_EXPRESS_LANE is now INFERENCE_FRONT_DOOR" in result.stderr
