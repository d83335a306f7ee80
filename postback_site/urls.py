from django.contrib import admin
from django.templatetags.static import static
from django.urls import path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from conversions.api import ConversionListView, ConversionStatsView
from conversions.views import PostbackView
from infra.metrics import metrics_view
from infra.middleware import machine_endpoint
from postback_site.views import HealthView, InfoView

urlpatterns = [
    # The reconciliation screens' addresses from before it became an app of its own.
    re_path(
        r"^admin/conversions/(?P<rest>(?:reportsource|reconciliationrun|reconciliationrow)/.*)$",
        RedirectView.as_view(url="/admin/reconciliation/%(rest)s", query_string=True, permanent=True),
    ),
    path("admin/", admin.site.urls),
    # Browsers ask for it on every page: answered, so no 404 is logged each time.
    path("favicon.ico", RedirectView.as_view(url=static("partners/favicon.png"), permanent=True)),
    path("health", HealthView.as_view(), name="health"),
    path("info", InfoView.as_view(), name="info"),
    path("metrics", metrics_view, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    # Before the catch-all postback route: these suffixes are reserved (Partner.clean).
    path("partner/<path:endpoint_path>/stats", ConversionStatsView.as_view(), name="partner-stats"),
    path("partner/<path:endpoint_path>/conversions", ConversionListView.as_view(), name="partner-conversions"),
    path("partner/<path:endpoint_path>", machine_endpoint(PostbackView.as_view()), name="postback"),
]

# JSON outside the admin (postback_site.views); the admin keeps Django's HTML pages.
handler400 = "postback_site.views.bad_request"
handler403 = "postback_site.views.permission_denied"
handler404 = "postback_site.views.page_not_found"
handler500 = "postback_site.views.server_error"
