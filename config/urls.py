from __future__ import annotations

from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from config import home
from inference.api.protocols.views_v2 import ServerMetadataView
from plumbing import health, metrics, problems
from streaming.dashboard import metrics_dashboard

urlpatterns = [
    path("", home.home, name="home"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("admin/metrics/", metrics_dashboard, name="metrics-dashboard"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("api/auth/", include("rest_framework.urls")),
    path("v1/", include("tenants.urls")),
    path("v1/", include("inference.urls")),
    path("v1/", include("streaming.urls")),
    path("v1/", include("jobs.urls")),
    path("v1/", include("inference.media.urls")),
    path("v2", ServerMetadataView.as_view(), name="v2-server"),
    path("v2/", include("inference.api.protocols.urls_v2")),
    # Last: anything else under an API prefix is a problem+json 404.
    re_path(r"^(?:v1|v2|api)/(?P<rest>.*)$", problems.api_not_found, name="api-not-found"),
]

handler400 = "plumbing.problems.handler400"
handler403 = "plumbing.problems.handler403"
handler404 = "plumbing.problems.handler404"
handler500 = "plumbing.problems.handler500"
