from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

application = get_wsgi_application()


from config.startup import freeze_startup_objects  # noqa: E402
from plumbing.bodylimit import LimitWSGI  # noqa: E402
from plumbing.overload import ShedWSGI  # noqa: E402

# An oversized body is refused before anything reads it (plumbing/bodylimit.py), and before
# that, a request over the process's bound is answered 503 at once (plumbing/overload.py).
application = ShedWSGI(LimitWSGI(application))  # type: ignore[assignment]

freeze_startup_objects()
