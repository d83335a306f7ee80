"""The admin site itself: named for the platform, its home page leading with the dashboards."""

import re

from django.contrib.auth.models import User


def app_labels(page: str) -> list[str]:
    return re.findall(r'class="app-(\w+) module', page)


def test_the_admin_is_named_for_the_platform_and_has_no_site_to_view(client, users):
    client.force_login(users["analyst"])
    page = client.get("/admin/").content.decode()
    assert "<title>Partners, conversions and publishers | Postback platform</title>" in page
    assert "Postback platform" in page and "Django administration" not in page
    assert "View site" not in page
    login = client.get("/admin/login/").content.decode()
    assert "Django" not in login.split("<body")[0]


def test_the_home_page_leads_with_the_dashboards_and_keeps_accounts_last(client, users):
    client.force_login(users["root"])
    page = client.get("/admin/").content.decode()
    assert page.index('id="dashboards-link"') < page.index('id="health-link"') < page.index("app-partners module")
    labels = app_labels(page)
    assert labels[:2] == ["partners", "conversions"]
    assert labels[-2:] == ["auth", "authtoken"], labels
    for username in ("manager", "analyst"):
        client.force_login(users[username])
        page = client.get("/admin/").content.decode()
        assert 'id="dashboards-link"' in page, username
        assert client.get("/admin/partners/partner/dashboard/").status_code == 200, username


def test_a_user_who_may_not_see_conversions_gets_no_dashboard_link(client, live_db):
    nobody = User.objects.create_user("staff_only", password="pw", is_staff=True)
    client.force_login(nobody)
    assert 'id="dashboards-link"' not in client.get("/admin/").content.decode()
