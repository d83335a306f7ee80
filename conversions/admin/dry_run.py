"""The test postback, a page of the partner admin: a pasted postback mapped and decided as a
real one would be (conversions/ingest/dry_run.py); nothing is stored."""

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from conversions.ingest.dry_run import postback_dry_run
from partners.admin import partner_postback_url
from partners.forms import TestPostbackForm


class DryRunPage:
    """The test postback view, served by the partner admin (`model_admin`) under its URLs."""

    def __init__(self, model_admin: admin.ModelAdmin) -> None:
        self.model_admin = model_admin

    def urls(self) -> list[URLPattern]:
        view = self.model_admin.admin_site.admin_view(self.view)
        return [path("<path:object_id>/test-postback/", view, name="partners_partner_test_postback")]

    def view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        partner = self.model_admin.get_object(request, object_id)
        if not self.model_admin.has_view_or_change_permission(request, partner):
            raise PermissionDenied
        form = TestPostbackForm(request.POST or None, partner=partner)
        result = postback_dry_run(partner=partner, request=form.postback_request()) if form.is_valid() else None
        context = {
            **self.model_admin.admin_site.each_context(request),
            "opts": self.model_admin.opts,
            "original": partner,
            "title": f"Test postback: {partner.partner_name}",
            "form": form,
            "result": result,
            "postback_url": partner_postback_url(partner, request),
        }
        return TemplateResponse(request, "admin/partners/partner/test_postback.html", context)
