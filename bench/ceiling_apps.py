"""The applications ``bench/ceiling.py`` serves: the issue's reference points, no platform.

- ``django_wsgi`` / ``django_asgi``: bare Django (no middleware, no apps) with one view that
  calls the model in-process — the issue's "bare Django on one pinned core" (gunicorn gthread
  about 3,900 req/s, uvicorn 1,400 to 1,700 where it was measured).
- ``raw_asgi``: an ASGI callable with no framework calling the model — a stand-in for the
  issue's bare FastAPI endpoint (about 6,800 req/s there, "the ceiling").

``CEILING_MODEL`` names the ONNX file (``bench/ceiling.py`` builds it from the digits data that
scikit-learn ships).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
from django.conf import settings

_options = ort.SessionOptions()
_options.intra_op_num_threads = 1
_options.inter_op_num_threads = 1
_session = ort.InferenceSession(
    os.environ["CEILING_MODEL"], _options, providers=["CPUExecutionProvider"]
)
_input = _session.get_inputs()[0].name


def predict(body: bytes) -> bytes:
    pixels = json.loads(body)["input"]["pixels"]
    label, _ = _session.run(None, {_input: np.asarray(pixels, np.float32).reshape(1, -1)})
    return json.dumps({"output": {"label": int(label[0])}}).encode()


settings.configure(
    DEBUG=False,
    SECRET_KEY="ceiling-benchmark",  # noqa: S106 - a throwaway process answering one view
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    USE_TZ=True,
)

from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402


@csrf_exempt
def infer(request: HttpRequest) -> HttpResponse:
    return HttpResponse(predict(request.body), content_type="application/json")


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [path("infer", infer), path("healthz", healthz)]

django_wsgi = get_wsgi_application()
django_asgi = get_asgi_application()


async def raw_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"ok" if scope["path"] == "/healthz" else predict(b"".join(chunks))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
