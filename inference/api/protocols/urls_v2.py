from __future__ import annotations

from django.urls import path

from inference.api.protocols import views_v2 as v

urlpatterns = [
    path("health/live", v.LiveView.as_view(), name="v2-live"),
    path("health/ready", v.ReadyView.as_view(), name="v2-ready"),
    path("models/<slug:name>", v.ModelMetadataView.as_view(), name="v2-model"),
    path("models/<slug:name>/ready", v.ModelReadyView.as_view(), name="v2-model-ready"),
    path("models/<slug:name>/infer", v.InferV2View.as_view(), name="v2-infer"),
    path(
        "models/<slug:name>/versions/<str:version>",
        v.VersionMetadataView.as_view(),
        name="v2-version",
    ),
    path(
        "models/<slug:name>/versions/<str:version>/ready",
        v.VersionReadyView.as_view(),
        name="v2-version-ready",
    ),
    path(
        "models/<slug:name>/versions/<str:version>/infer",
        v.VersionInferView.as_view(),
        name="v2-version-infer",
    ),
]
