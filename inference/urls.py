from __future__ import annotations

from django.urls import path

from inference import views

urlpatterns = [
    path("models", views.ModelListView.as_view(), name="model-list"),
    path("models/<slug:name>", views.ModelDetailView.as_view(), name="model-detail"),
    path("models/<slug:name>/infer", views.InferView.as_view(), name="model-infer"),
]
