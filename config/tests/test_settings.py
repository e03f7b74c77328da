from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _clean_env(**env: str) -> dict[str, str]:
    """This process's environment without the settings under test and without a developer's
    .env (ENV_FILE empty), plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG")}
    clean["ENV_FILE"] = ""
    clean.update(env)
    return clean


def _settings_import(
    code: str = "import config.settings", **env: str
) -> subprocess.CompletedProcess[str]:
    clean = _clean_env(**env)
    return subprocess.run(
        [sys.executable, "-c", code],
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
    assert "SECRET_KEY (or SECRET_KEY_FILE) is not set" in result.stderr


def test_it_says_in_one_line_that_the_secret_key_is_missing():
    """manage.py, not a bare import: the line must survive Django's command start-up."""
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "SECRET_KEY" in lines[0]
    assert "Traceback" not in result.stderr


def test_it_reads_secrets_from_files(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-a-file-" + "x" * 40)
    out = _settings_import(
        "import config.settings as s; print(s.SECRET_KEY)", SECRET_KEY_FILE=str(secret)
    )
    assert out.stdout.strip() == secret.read_text()


_SHOW = "import config.settings as s; print(s.DEBUG, s.SECRET_KEY, s.ALLOWED_HOSTS)"


def test_it_reads_a_dotenv_file(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# written by make run\n"
        "\n"
        "DEBUG=true\n"
        "export SECRET_KEY='from-dotenv-key'\n"
        'ALLOWED_HOSTS="a.example,b.example"\n'
    )
    out = _settings_import(_SHOW, ENV_FILE=str(dotenv))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "from-dotenv-key", "['a.example',", "'b.example']"]


def test_the_environment_wins_over_the_dotenv_file(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("DEBUG=true\nSECRET_KEY=from-dotenv-key\n")
    out = _settings_import(_SHOW, ENV_FILE=str(dotenv), DEBUG="false", SECRET_KEY="from-env")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["False", "from-env"]


def test_a_missing_dotenv_file_is_no_error(tmp_path):
    out = _settings_import(_SHOW, ENV_FILE=str(tmp_path / "absent"), DEBUG="true")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""


def test_make_writes_a_private_dotenv_once(tmp_path):
    """``make run``'s .env: mode 600, DEBUG on, a fresh SECRET_KEY, never overwritten."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    make = ["make", "-s", "-f", str(ROOT / "Makefile"), "-C", str(tmp_path), f"PY={sys.executable}"]
    subprocess.run([*make, ".env"], check=True, capture_output=True, timeout=60)
    dotenv = tmp_path / ".env"
    assert stat.S_IMODE(dotenv.stat().st_mode) == 0o600
    first = dotenv.read_text()
    assert "DEBUG=true" in first.splitlines()
    (key,) = [line for line in first.splitlines() if line.startswith("SECRET_KEY=")]
    assert len(key) > 60
    out = _settings_import(_SHOW, ENV_FILE=str(dotenv))
    assert out.stdout.split()[:2] == ["True", key.removeprefix("SECRET_KEY=")]
    subprocess.run([*make, ".env"], check=True, capture_output=True, timeout=60)
    assert dotenv.read_text() == first


def test_the_dotenv_file_is_ignored_by_git():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".env"], cwd=ROOT, capture_output=True, timeout=30
    )
    assert ignored.returncode == 0


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
