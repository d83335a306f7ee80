from django.contrib import admin
from django.urls import path

from conversions.views import PostbackView
from postback_site.views import HealthView, InfoView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health", HealthView.as_view(), name="health"),
    path("info", InfoView.as_view(), name="info"),
    path("partner/<path:endpoint_path>", PostbackView.as_view(), name="postback"),
]
