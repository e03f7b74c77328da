from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from tenants import views

router = SimpleRouter(trailing_slash=False)
router.register("keys", views.APIKeyViewSet, basename="apikey")

urlpatterns = [
    path("tenant", views.TenantView.as_view(), name="tenant"),
    path("auth/token", views.TokenView.as_view(), name="auth-token"),
    *router.urls,
]
