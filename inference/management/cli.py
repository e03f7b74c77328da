"""What the registry commands share: who acts, the ``--skip-check`` option."""

from __future__ import annotations

import getpass

from django.core.management.base import CommandParser


def actor() -> str:
    """Who runs a registry command, for the audit log."""
    try:
        return f"manage.py:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (some containers)
        return "manage.py"


def skip_check_argument(parser: CommandParser) -> None:
    parser.add_argument(
        "--skip-check",
        metavar="REASON",
        help="Give traffic without the pre-activation check; the reason is audited.",
    )
