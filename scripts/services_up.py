"""Exit 0 when the PostgreSQL server and Redis of the test URLs answer (used by `make test`)."""

from __future__ import annotations

import sys
from urllib.parse import urlsplit

import psycopg
import redis


def main(database_url: str, redis_url: str) -> int:
    db = urlsplit(database_url)
    try:
        # The server, not the test database (pytest-django creates and drops its own).
        psycopg.connect(
            host=db.hostname,
            port=db.port or 5432,
            user=db.username,
            dbname="postgres",
            connect_timeout=3,
        ).close()
        redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()
    except (psycopg.Error, redis.RedisError) as exc:
        print(f"services_up: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
