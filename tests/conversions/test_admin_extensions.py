"""One admin per model, registered by the model's own app; other apps add to it through
its named extension points, never by unregistering it."""

import pytest
from django.contrib import admin

from conversions.admin.conversions import PartnerConversionAdmin, conversion_admin_extensions
from conversions.models import PartnerConversion
from partners.admin import PartnerAdmin, partner_admin_extensions
from partners.models import Partner

SQLITE = pytest.mark.parametrize("backend", ["sqlite"])


def test_each_model_keeps_the_admin_its_own_app_registered():
    assert type(admin.site.get_model_admin(Partner)) is PartnerAdmin
    assert type(admin.site.get_model_admin(PartnerConversion)) is PartnerConversionAdmin
    assert set(partner_admin_extensions) == {"conversions"}
    assert set(conversion_admin_extensions) == {"publishers"}


@SQLITE
def test_the_partner_pages_carry_what_conversions_add(manager_client, involve):
    listed = manager_client.get("/admin/partners/partner/").content.decode()
    assert '<td class="field-postbacks_today">0</td>' in listed
    assert 'href="/admin/partners/partner/dashboard/">Dashboard of all partners</a>' in listed
    page = manager_client.get(f"/admin/partners/partner/{involve.pk}/change/").content.decode()
    tools = page.split('class="object-tools"')[1].split("</ul>")[0]
    links = [
        f'href="/admin/partners/partner/{involve.pk}/test-postback/">Test postback',
        'href="/admin/conversions/partnerconversion/?partner=involve_asia">Conversions',
        f'href="/admin/partners/partner/{involve.pk}/dashboard/">Dashboard',
    ]
    assert [tools.index(link) for link in links] == sorted(tools.index(link) for link in links)
    assert "refused postbacks (7 days)" in page.lower()


@SQLITE
def test_a_conversion_page_carries_the_section_publishers_add(analyst_client, involve):
    analyst_client.get("/partner/involve/event?conversion_id=P-1")
    conversion = PartnerConversion.objects.using(involve.database_alias).get()
    page = analyst_client.get(
        f"/admin/conversions/partnerconversion/{conversion.pk}/change/?partner=involve_asia"
    ).content.decode()
    assert "Publisher postbacks" in page and "No postback was owed to a publisher for this conversion." in page
