"""The publishers admin: validation, URL preview, match check, test send, delivery log, actions, reports."""

import io
from decimal import Decimal

import pytest
from django.urls import reverse
from openpyxl import load_workbook

from publishers.models import DELIVERED, FAILED, Publisher
from publishers.worker import DeliveryWorker
from tests.publishers.test_forwarding import deliveries, involve_postback

CHANGELIST = reverse("admin:publishers_publisher_changelist")


@pytest.fixture
def backend() -> str:
    """The admin's pages read partner databases the same way on both backends: SQLite here."""
    return "sqlite"


@pytest.fixture
def admin_client(client, users):
    """The test client logged in as the superuser (on live databases, not pytest-django's)."""
    client.force_login(users["root"])
    return client


def form_data(**overrides):
    data = {
        "code": "rampup",
        "name": "RAMPUP",
        "is_active": "on",
        "match_field": "sub_id",
        "match_prefixes": "",
        "match_regex": "^(RAMPUP|RPID.*)",
        "url_template": "https://pub.example/pb?c={conversion_id}&p={payout}",
        "http_method": "GET",
        "events": ["recorded", "approved"],
        "payout_kind": "percent_sale",
        "payout_value": "1",
        "signing_secret": "",
        "report_recipients": "ops@rampup.example",
        "offer_payouts-TOTAL_FORMS": "1",
        "offer_payouts-INITIAL_FORMS": "0",
        "offer_payouts-MIN_NUM_FORMS": "0",
        "offer_payouts-MAX_NUM_FORMS": "1000",
        "offer_payouts-0-offer": "OF9",
        "offer_payouts-0-payout_kind": "percent_sale",
        "offer_payouts-0-payout_value": "2.5",
    }
    data.update(overrides)
    return data


def test_manager_adds_a_publisher_and_the_ingest_sees_it_at_once(client, manager_client, involve):
    response = manager_client.post(reverse("admin:publishers_publisher_add"), form_data(signing_secret="k-123"))
    assert response.status_code == 302, response.context["adminform"].errors if response.context else response
    publisher = Publisher.objects.get()
    assert publisher.signing_secret == "k-123" and publisher.offer_payouts.get().payout_value == Decimal("2.5")
    involve_postback(client, offer_id="OF9")
    [delivery] = deliveries(involve)
    assert delivery.url == "https://pub.example/pb?c=C-1&p=3.09"
    # the secret is write-only: the form never shows it, and saving without it keeps it
    page = manager_client.get(reverse("admin:publishers_publisher_change", args=[publisher.pk])).content.decode()
    assert "k-123" not in page
    data = form_data(
        **{
            "offer_payouts-INITIAL_FORMS": "1",
            "offer_payouts-0-id": str(publisher.offer_payouts.get().pk),
            "offer_payouts-0-publisher": str(publisher.pk),
        }
    )
    assert (
        manager_client.post(reverse("admin:publishers_publisher_change", args=[publisher.pk]), data).status_code == 302
    )
    assert Publisher.objects.get().signing_secret == "k-123"


@pytest.mark.parametrize(
    "overrides, field, message",
    [
        ({"url_template": "https://pub.example/pb?c={conversion}"}, "url_template", "unknown macro(s) {conversion}"),
        ({"url_template": "ftp://pub.example/pb"}, "url_template", "only http:// and https://"),
        ({"url_template": "https://{sub_id}.example/pb"}, "url_template", "host name"),
        ({"match_regex": "^(RAMPUP"}, "match_regex", "not a valid regular expression"),
        ({"match_prefixes": "RPID"}, "match_regex", "either a list of prefixes or a regular expression"),
        ({"report_recipients": "ops@x.example, nope"}, "report_recipients", "'nope' is not an email address"),
        ({"payout_value": "-1"}, "payout_value", "never negative"),
        ({"url_template": "http://169.254.169.254/latest/meta-data/?c={conversion_id}"}, "url_template", "metadata"),
    ],
)
def test_bad_configuration_is_a_clear_form_error(manager_client, live_db, overrides, field, message):
    response = manager_client.post(reverse("admin:publishers_publisher_add"), form_data(**overrides))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert message in " ".join(errors[field]), errors
    assert not Publisher.objects.exists()


def test_change_page_previews_the_url_for_a_real_conversion_and_checks_the_last_100(
    client, admin_client, involve, make_publisher
):
    publisher = make_publisher(url_template="https://pub.example/pb?c={conversion_id}&s={sub_id}&p={payout}")
    involve_postback(client, conversion_id="OLD", aff_sub="RPID-1")
    involve_postback(client, conversion_id="NEW", aff_sub="OPPO-2")
    page = admin_client.get(reverse("admin:publishers_publisher_change", args=[publisher.pk])).content.decode()
    assert "GET https://pub.example/pb?c=OLD&amp;s=RPID-1&amp;p=1.23" in page  # its newest matching one
    assert "involve_asia: 1 of 2 match: OLD (RPID-1)" in page


def test_actions_pause_resume_backfill_and_test_send(client, admin_client, involve, make_publisher, fake_publisher):
    involve_postback(client, conversion_id="EARLY", aff_sub="RPID-1")  # before the publisher existed
    publisher = make_publisher(url_template=fake_publisher.url + "/pb?c={conversion_id}&e={event}")

    def act(action, **extra):
        data = {"action": action, "_selected_action": [publisher.pk], "index": 0, **extra}
        return admin_client.post(CHANGELIST, data, follow=True)

    response = act("backfill", days="0")
    assert "give a number of days" in response.content.decode()
    response = act("backfill", days="7")
    assert "Rampup: 1 conversion(s) of the last 7 days queued." in response.content.decode()
    assert act("backfill", days="7").content.decode().count("0 conversion(s) of the last 7 days") == 1

    response = act("test_send")
    assert "-&gt; HTTP 200" in response.content.decode()
    [request] = fake_publisher.requests()
    assert request.query == {"c": ["EARLY"], "e": ["test"]}

    act("pause")
    assert Publisher.objects.get().is_paused
    assert DeliveryWorker().run_once().claimed == 0
    act("resume")
    assert DeliveryWorker().run_once().delivered == 1


def test_delivery_log_filters_and_resend(client, admin_client, involve, make_publisher, fake_publisher, clock):
    publisher = make_publisher(url_template=fake_publisher.url + "/pb?c={conversion_id}")
    involve_postback(client, conversion_id="OK-1")
    involve_postback(client, conversion_id="BAD-1", aff_sub="RPID-2")
    fake_publisher.answers(200, *[500] * 7)
    worker = DeliveryWorker(clock=clock, batch_size=1)
    for waited in (0, 0, 60, 300, 1800, 7200, 43200, 86400):
        clock.advance(seconds=waited)
        worker.run_once()
    failed = deliveries(involve).get(state=FAILED)
    log_url = reverse("admin:publishers_publisher_deliveries", args=[publisher.pk])

    page = admin_client.get(log_url + "?state=failed").content.decode()
    assert page.count('data-state="failed"') == 1 and 'data-state="delivered"' not in page
    assert "HTTP 500" in page and "{&quot;error&quot;: &quot;nope&quot;}" in page
    assert admin_client.get(log_url + "?state=pending").content.decode().count("data-state=") == 0

    response = admin_client.post(log_url + "?state=failed", {"delivery": [f"{involve.pk}:{failed.pk}"]}, follow=True)
    assert "1 deliveries queued to be sent again" in response.content.decode()
    fake_publisher.default_status = 200
    DeliveryWorker(clock=clock).run_once()
    failed.refresh_from_db()
    assert failed.state == DELIVERED and failed.attempts == 8

    # and on the conversion's own page
    conversion_url = reverse("admin:conversions_partnerconversion_change", args=[failed.conversion_id])
    page = admin_client.get(conversion_url + "?partner=involve_asia").content.decode()
    assert 'id="conversion-deliveries"' in page and "BAD-1" in page and "delivered" in page


def test_report_downloads_as_csv_and_xlsx_and_bad_dates_are_form_errors(client, admin_client, involve, make_publisher):
    publisher = make_publisher()
    involve_postback(client, conversion_id="REP-1", datetime_conversion="2026-01-07 08:00:00")
    url = reverse("admin:publishers_publisher_report", args=[publisher.pk])
    csv_response = admin_client.get(url, {"start": "2026-01-05", "end": "2026-01-11", "format": "csv"})
    assert csv_response["Content-Disposition"] == 'attachment; filename="rampup-2026-01-05-2026-01-11.csv"'
    assert "REP-1" in csv_response.content.decode() and "1.23" in csv_response.content.decode()
    xlsx = admin_client.get(url, {"start": "2026-01-05", "end": "2026-01-11", "format": "xlsx"})
    rows = list(load_workbook(io.BytesIO(xlsx.content)).active.values)
    assert rows[1][1] == "REP-1"
    bad = admin_client.get(url, {"start": "2026-01-11", "end": "2026-01-05", "format": "csv"})
    assert bad.status_code == 400 and "The end date is before the start date." in bad.content.decode()
    bad = admin_client.get(url, {"start": "yesterday", "end": "2026-01-05"})
    assert bad.status_code == 400 and "Enter a valid date." in bad.content.decode()


def test_a_private_address_is_refused_when_saved_unless_allowed(manager_client, live_db):
    from django.test import override_settings

    with override_settings(OUTBOUND_ALLOW_PRIVATE=False):
        response = manager_client.post(
            reverse("admin:publishers_publisher_add"), form_data(url_template="http://10.1.2.3/pb?c={conversion_id}")
        )
    assert "10.1.2.3 is a private address" in " ".join(response.context["adminform"].form.errors["url_template"])
    assert not Publisher.objects.exists()


def test_analyst_reads_publishers_but_cannot_change_or_resend(analyst_client, make_publisher):
    publisher = make_publisher()
    assert analyst_client.get(CHANGELIST).status_code == 200
    log_url = reverse("admin:publishers_publisher_deliveries", args=[publisher.pk])
    assert analyst_client.get(log_url).status_code == 200
    assert analyst_client.post(log_url, {"delivery": ["1:1"]}).status_code == 403


def test_malformed_resend_selection_is_ignored_not_a_500(admin_client, make_publisher):
    publisher = make_publisher()
    log_url = reverse("admin:publishers_publisher_deliveries", args=[publisher.pk])
    response = admin_client.post(log_url, {"delivery": ["nonsense", "1:", ":2", "99999:1"]}, follow=True)
    assert response.status_code == 200 and "0 deliveries queued" in response.content.decode()


def test_a_scoped_user_sees_only_publishers_of_their_partners(client, users, involve, rector, make_publisher):
    from django.contrib.auth.models import Group, User

    from partners.models import PartnerScope

    user = User.objects.create_user("ia_manager", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name="Account managers"))
    PartnerScope.objects.create(user=user).partners.add(involve)
    client.force_login(user)
    theirs = make_publisher(code="ia_only", partners=[involve])
    both = make_publisher(code="both", partners=[involve, rector])
    everywhere = make_publisher(code="everywhere")
    listed = client.get(CHANGELIST).content.decode()
    assert "ia_only" in listed and "both" not in listed and "everywhere" not in listed
    for publisher, status in ((theirs, 200), (both, 404), (everywhere, 404)):
        log_url = reverse("admin:publishers_publisher_deliveries", args=[publisher.pk])
        assert client.get(log_url).status_code == status
        report_url = reverse("admin:publishers_publisher_report", args=[publisher.pk])
        assert client.get(report_url).status_code == status
    added = client.get(reverse("admin:publishers_publisher_add"))
    choices = [label for _value, label in added.context["adminform"].form.fields["partners"].choices]
    assert [str(label) for label in choices] == [str(involve)]


def test_the_add_form_ticks_the_default_events_and_refuses_none(manager_client, live_db):
    page = manager_client.get(reverse("admin:publishers_publisher_add"))
    assert page.context["adminform"].form["events"].value() == ["recorded", "approved", "rejected", "paid"]
    assert page.content.decode().count('name="events" value="recorded" id="id_events_0" checked') == 1
    response = manager_client.post(reverse("admin:publishers_publisher_add"), form_data(events=[]))
    assert response.status_code == 200
    assert "Choose at least one event" in " ".join(response.context["adminform"].form.errors["events"])
    assert not Publisher.objects.exists()


def test_a_publisher_saved_in_code_without_events_gets_the_defaults(live_db):
    publisher = Publisher.objects.create(code="p", name="P", match_regex="^X", url_template="https://pub.example/pb")
    assert publisher.events == ["recorded", "approved", "rejected", "paid"]


@pytest.mark.parametrize(
    "template",
    [
        "http://user:pw@pub.example/pb?c={conversion_id}",
        "https://token@pub.example/pb",
        "https://user:@pub.example:8443/pb",
    ],
)
def test_credentials_in_the_url_template_are_a_form_error_saying_what_to_do(manager_client, live_db, template):
    response = manager_client.post(reverse("admin:publishers_publisher_add"), form_data(url_template=template))
    assert response.status_code == 200
    message = " ".join(response.context["adminform"].form.errors["url_template"])
    assert "user name or password in the URL" in message and "signing secret" in message
    assert not Publisher.objects.exists()


def test_an_at_sign_in_the_query_is_not_taken_for_credentials(manager_client, live_db):
    response = manager_client.post(
        reverse("admin:publishers_publisher_add"), form_data(url_template="https://pub.example/pb?mail=a@b.example")
    )
    assert response.status_code == 302


def test_the_match_check_leaves_out_networks_without_conversions(client, admin_client, involve, rector, make_publisher):
    publisher = make_publisher()
    page = admin_client.get(reverse("admin:publishers_publisher_change", args=[publisher.pk])).content.decode()
    assert "0 of 0" not in page and "None of its networks has a conversion yet." in page
    involve_postback(client, conversion_id="IA-1", aff_sub="RPID-1")
    page = admin_client.get(reverse("admin:publishers_publisher_change", args=[publisher.pk])).content.decode()
    assert "involve_asia: 1 of 1 match: IA-1 (RPID-1)" in page and "rector:" not in page


def test_the_url_template_is_a_full_width_wrapping_box(admin_client, make_publisher):
    publisher = make_publisher(url_template="https://pub.example/pb?" + "&".join(f"p{n}={{payout}}" for n in range(40)))
    response = admin_client.get(reverse("admin:publishers_publisher_change", args=[publisher.pk]))
    field = response.context["adminform"].form["url_template"]
    html = str(field)
    assert html.startswith("<textarea") and 'class="vLargeTextField url-template"' in html
    assert publisher.url_template in response.content.decode().replace("&amp;", "&")


def test_an_analyst_is_offered_no_publisher_action_and_posting_one_changes_nothing(
    analyst_client, involve, make_publisher, fake_publisher
):
    publisher = make_publisher(url_template=fake_publisher.url + "/pb")
    listed = analyst_client.get(CHANGELIST)
    assert listed.status_code == 200 and 'name="action"' not in listed.content.decode()
    for action in ("pause", "resume", "backfill", "test_send"):
        data = {"action": action, "_selected_action": [publisher.pk], "index": 0, "days": "7"}
        response = analyst_client.post(CHANGELIST, data, follow=True)
        assert response.status_code == 200 and 'name="action"' not in response.content.decode(), action
    assert not Publisher.objects.get().is_paused
    assert fake_publisher.requests() == []
    assert not deliveries(involve).exists()


def test_a_scoped_user_gets_404_on_every_page_of_another_partners_publisher(
    client, users, involve, rector, make_publisher
):
    from django.contrib.auth.models import Group, User

    from partners.models import PartnerScope

    user = User.objects.create_user("ia_manager", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name="Account managers"))
    PartnerScope.objects.create(user=user).partners.add(involve)
    client.force_login(user)
    theirs = make_publisher(code="ia_only", partners=[involve])
    other = make_publisher(code="rector_only", partners=[rector])
    for name in ("change", "delete", "history", "deliveries", "report"):
        assert client.get(reverse(f"admin:publishers_publisher_{name}", args=[theirs.pk])).status_code in (200, 403)
        assert client.get(reverse(f"admin:publishers_publisher_{name}", args=[other.pk])).status_code == 404, name
    assert client.post(reverse("admin:publishers_publisher_change", args=[other.pk]), form_data()).status_code == 404
    assert client.get(reverse("admin:publishers_publisher_change", args=[999999])).status_code == 404
