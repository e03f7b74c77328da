from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

application = get_wsgi_application()

from django.conf import settings  # noqa: E402

from config.startup import freeze_startup_objects  # noqa: E402

if settings.INFERENCE_EXPRESS_LANE:
    from inference.express import lane

    # Well-formed unary inference requests skip the middleware stack (inference/express.py).
    application = lane(application)  # type: ignore[assignment]

from plumbing.bodylimit import LimitWSGI  # noqa: E402
from plumbing.overload import ShedWSGI  # noqa: E402

# An oversized body is refused before anything reads it (plumbing/bodylimit.py), and before
# that, a request over the process's bound is answered 503 at once (plumbing/overload.py).
application = ShedWSGI(LimitWSGI(application))  # type: ignore[assignment]

freeze_startup_objects()
