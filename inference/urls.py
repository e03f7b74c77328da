from __future__ import annotations

from django.urls import path

from inference.api import registry_views, views
from inference.api.protocols import views_openai

urlpatterns = [
    path("embeddings", views_openai.EmbeddingsView.as_view(), name="openai-embeddings"),
    path("completions", views_openai.CompletionsView.as_view(), name="openai-completions"),
    path("chat/completions", views_openai.ChatCompletionsView.as_view(), name="openai-chat"),
    path("models", views.ModelListView.as_view(), name="model-list"),
    path("models/<slug:name>", views.ModelDetailView.as_view(), name="model-detail"),
    path("models/<slug:name>/infer", views.InferView.as_view(), name="model-infer"),
    path("models/<slug:name>/weights", registry_views.WeightsView.as_view(), name="model-weights"),
    path(
        "models/<slug:name>/versions/<str:version>/activate",
        registry_views.ActivateView.as_view(),
        name="model-version-activate",
    ),
    path(
        "models/<slug:name>/versions/<str:version>/promote",
        registry_views.PromoteView.as_view(),
        name="model-version-promote",
    ),
]
