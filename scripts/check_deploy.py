"""Run `manage.py check --deploy --fail-level WARNING` with the production variables the README
documents (placeholder values; nothing is connected to)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

PRODUCTION_ENV = {
    "DEBUG": "false",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "ALLOWED_HOSTS": "sluice.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://sluice.example.com",
    "DATABASE_URL": "postgres://sluice@db.invalid:5432/sluice",
    "REDIS_URL": "redis://redis.invalid:6379/0",
    "TRUSTED_PROXY_COUNT": "1",
    "JWT_SIGNING_KEYS": f"k1={secrets.token_urlsafe(40)}",
}


def main() -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECURE_SSL_REDIRECT")}
    env.update(PRODUCTION_ENV)
    env["ENV_FILE"] = ""  # a developer's .env must not change what production would check
    cmd = [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"]
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
