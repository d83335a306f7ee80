import re

from django.contrib import admin
from django.templatetags.static import static
from django.urls import path, re_path, register_converter
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from conversions.api import ConversionListView, ConversionStatsView
from conversions.views import ExtraPathPostbackView, PostbackView
from infra.metrics import metrics_view
from infra.middleware import machine_endpoint
from partners.models import ENDPOINT_SEGMENT, RESERVED_ROOTS
from postback_site.views import HealthView, InfoView


class ExtraPathConverter:
    """A path of segments whose first is none of the service's own (RESERVED_ROOTS)."""

    _reserved = "|".join(re.escape(root) for root in sorted(RESERVED_ROOTS))
    regex = rf"(?!(?:{_reserved})(?:/|$)){ENDPOINT_SEGMENT}(?:/{ENDPOINT_SEGMENT})*/?"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(ExtraPathConverter, "extra_path")

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
    # Last: partners' extra paths (the addresses networks were given before), never under the
    # service's own first segments (RESERVED_ROOTS: Partner.extra_paths refuses them too; /admin
    # without its slash still gets the admin's redirect, /static/ still the static files).
    path("<extra_path:path>", machine_endpoint(ExtraPathPostbackView.as_view()), name="postback-extra-path"),
]

# JSON outside the admin (postback_site.views); the admin keeps Django's HTML pages.
handler400 = "postback_site.views.bad_request"
handler403 = "postback_site.views.permission_denied"
handler404 = "postback_site.views.page_not_found"
handler500 = "postback_site.views.server_error"
