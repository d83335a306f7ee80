"""The health page (`/admin/health/`), the link to it on the admin's home page, the incidents'
admin and the health settings' admin: what each user sees, within their partner scope."""

import datetime
import re

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from health.models import HealthSettings, Incident, IncidentEvent, Notification, PartnerHealth
from partners.models import Partner, PartnerScope

HEALTH_PAGE = "/admin/health/"


def hourly(now: datetime.datetime, received: int = 20, invalid: int = 1) -> list[list]:
    start = now.replace(minute=0, second=0, microsecond=0) - datetime.timedelta(hours=47)
    return [
        [(start + datetime.timedelta(hours=n)).isoformat(), received + n % 5, invalid if n % 7 == 0 else 0]
        for n in range(48)
    ]


def signals(now: datetime.datetime, **overrides) -> dict:
    values = {
        "last_received_at": (now - datetime.timedelta(minutes=3)).isoformat(),
        "last_received_age_seconds": 180.0,
        "last_hour": 52,
        "normal_hour": 60.4,
        "today": 1204,
        "today_normal": 1310.2,
        "invalid_share": 0.021,
        "refused": 3,
        "refused_share": 0.004,
        "storage_ok": True,
        "storage_error": "",
        "reconciliation": {
            "match_rate": 0.987,
            "missing_here": 12,
            "report_rows": 1000,
            "at": "2026-12-06T03:00:00+00:00",
            "failed": False,
        },
        "publishers_paused": [],
        "hourly_48h": hourly(now),
        "gap_p95_minutes": 4.0,
    }
    return {**values, **overrides}


def health_of(partner: Partner, light: str, **signal_overrides) -> PartnerHealth:
    now = timezone.now()
    return PartnerHealth.objects.create(
        partner=partner,
        light=light,
        last_received_at=now - datetime.timedelta(minutes=3),
        checked_at=now - datetime.timedelta(seconds=20),
        signals=signals(now, **signal_overrides),
    )


def scoped_manager(*partners: Partner) -> User:
    user = User.objects.create_user("ia_manager", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name="Account managers"))
    PartnerScope.objects.create(user=user).partners.add(*partners)
    return user


def health_rows(response) -> list[dict[str, str]]:
    """The health table's rows: partner code, light and each cell's text."""
    assert response.status_code == 200, response.content[:500]
    html = response.content.decode().split('id="health-table"')[1].split("</table>")[0]
    rows = []
    for attributes, body in re.findall(r"<tr data-partner=([^>]*)>(.*?)</tr>", html.split("<tbody>")[1], re.S):
        cells = [
            re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", cell)).strip()
            for cell in re.findall(r"<td[^>]*>(.*?)</td>", body, re.S)
        ]
        rows.append(
            {
                "partner": attributes.split('"')[1],
                "light": re.search(r'data-light="(\w+)"', attributes)[1],
                "cells": cells,
            }
        )
    return rows


@pytest.mark.parametrize("backend", ["sqlite"])
def test_root_sees_every_partner_red_first_with_its_numbers_in_words(client, users, involve, rector):
    health_of(involve, "green")
    health_of(
        rector,
        "red",
        storage_ok=False,
        storage_error="connection refused",
        publishers_paused=["pub-a"],
        reconciliation=None,
        invalid_share=None,
    )
    silent = Incident.objects.create(partner=rector, rule="silent", summary="No postback for 3 h")
    Incident.objects.create(partner=rector, rule="drop", summary="old", state=Incident.RESOLVED)
    client.force_login(users["root"])

    response = client.get(HEALTH_PAGE)
    rows = health_rows(response)

    assert [(row["partner"], row["light"]) for row in rows] == [("rector", "red"), ("involve_asia", "green")]
    involve_cells = rows[1]["cells"]
    assert involve_cells[2] == "3 min ago"
    assert involve_cells[3] == "52 / normal 60"
    assert involve_cells[4] == "1,204 / normal 1,310"
    assert involve_cells[5] == "2.1%"
    assert involve_cells[6] == "0.4% (3)"
    assert involve_cells[7] == "98.7% matched, 12 missing here, 2026-12-06"
    assert involve_cells[8] == "-"
    rector_cells = rows[0]["cells"]
    assert rector_cells[5] == "-"  # unknown, not 0%
    assert "no run yet" in rector_cells[7]
    assert "storage failing: connection refused" in rector_cells[7]
    assert "publishers paused: pub-a" in rector_cells[7]
    # Only the open incident, linked to its page.
    page = response.content.decode()
    assert rector_cells[8] == "silent"
    assert f'href="/admin/health/incident/{silent.pk}/change/"' in page
    assert page.count("/admin/health/incident/") - page.count('href="/admin/health/incident/"') == 1
    # Each checked partner's 48 hours, drawn on the server.
    assert page.count('<svg class="health-chart"') == 2
    assert "Last checked" in page and "manage.py deliver_postbacks" in page and "channel_health --once" in page
    assert "1 red, 0 amber, 1 green" in page


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_partner_never_checked_says_so_and_odd_signals_are_unknown(client, users, involve, rector):
    PartnerHealth.objects.create(
        partner=involve,
        light="amber",
        checked_at=timezone.now(),
        signals={"today": "many", "hourly_48h": [["x"], None, ["2026-12-06T00:00:00+00:00", 5, None]]},
    )
    client.force_login(users["root"])

    rows = health_rows(client.get(HEALTH_PAGE))

    assert [(row["partner"], row["light"]) for row in rows] == [("involve_asia", "amber"), ("rector", "unchecked")]
    assert rows[0]["cells"][2:8] == ["never", "unknown", "unknown", "-", "-", "no run yet"]
    assert rows[1]["cells"][0] == "not checked yet"
    assert "not checked yet" in rows[1]["cells"][2]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_scoped_manager_sees_only_its_partners_and_not_another_partners_incident(client, users, involve, rector):
    health_of(involve, "amber")
    health_of(rector, "red")
    theirs = Incident.objects.create(partner=involve, rule="drop", summary="Half the usual traffic")
    other = Incident.objects.create(partner=rector, rule="silent", summary="No postback for 3 h")
    IncidentEvent.objects.create(incident=other, kind="opened", text="rector secret")
    client.force_login(scoped_manager(involve))

    assert [row["partner"] for row in health_rows(client.get(HEALTH_PAGE))] == ["involve_asia"]

    listed = client.get("/admin/health/incident/").content.decode()
    assert "Half the usual traffic" in listed and "No postback for 3 h" not in listed
    partner_filter = listed.split("By partner", 1)[1].split("</details>", 1)[0] if "By partner" in listed else listed
    assert "rector" not in partner_filter.lower()
    assert client.get(f"/admin/health/incident/{theirs.pk}/change/").status_code == 200
    refused = client.get(f"/admin/health/incident/{other.pk}/change/")
    assert refused.status_code == 404 and b"rector secret" not in refused.content
    assert client.get(f"/admin/health/incident/{other.pk}/history/").status_code == 404
    assert client.get("/admin/health/incident/999999/change/").status_code == 404


def test_the_home_page_links_the_health_page_first_for_who_may_see_incidents(client, users):
    for username in ("root", "manager", "analyst"):
        client.force_login(users[username])
        page = client.get("/admin/").content.decode()
        assert 'id="health-link"' in page, username
        assert page.index('id="health-link"') < page.index('class="app-partners module')
        assert client.get(HEALTH_PAGE).status_code == 200
    # The apps' own index pages do not repeat it.
    client.force_login(users["root"])
    assert 'id="health-link"' not in client.get("/admin/partners/").content.decode()

    nobody = User.objects.create_user("staff_only", password="pw", is_staff=True)
    client.force_login(nobody)
    assert 'id="health-link"' not in client.get("/admin/").content.decode()
    assert client.get(HEALTH_PAGE).status_code == 404


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_incidents_page_shows_its_history_and_notifications_read_only(client, users, involve):
    opened = timezone.now() - datetime.timedelta(hours=3, minutes=12)
    incident = Incident.objects.create(
        partner=involve,
        rule="storage_failing",
        summary="Storage refuses writes",
        evidence={"error": "disk full"},
        opened_at=opened,
        state=Incident.RESOLVED,
        resolved_at=opened + datetime.timedelta(hours=2, minutes=5),
    )
    IncidentEvent.objects.create(incident=incident, kind="opened", text="Storage refuses writes", at=opened)
    IncidentEvent.objects.create(incident=incident, kind="resolved", text="Storage writes again")
    Notification.objects.create(
        incident=incident, event="open", channel="webhook", state="failed", attempts=5, last_error="HTTP 502 from hook"
    )
    client.force_login(users["analyst"])

    listed = client.get("/admin/health/incident/?state=resolved").content.decode()
    assert "Storage refuses writes" in listed and "2 h 5 min" in listed
    assert "Storage refuses writes" not in client.get("/admin/health/incident/?state=open").content.decode()
    assert "Storage refuses writes" in client.get("/admin/health/incident/?rule=storage_failing").content.decode()

    page = client.get(f"/admin/health/incident/{incident.pk}/change/").content.decode()
    assert "Storage writes again" in page and "disk full" in page
    assert "HTTP 502 from hook" in page and "webhook" in page
    assert 'name="_save"' not in page and "Delete" not in page.split('id="content-main"')[1]
    assert client.get("/admin/health/incident/add/").status_code == 403
    root = client
    root.force_login(users["root"])
    assert root.get("/admin/health/incident/add/").status_code == 403
    assert root.post(f"/admin/health/incident/{incident.pk}/delete/").status_code == 403


@pytest.mark.parametrize("backend", ["sqlite"])
def test_health_settings_take_only_rule_names_and_the_managers_own_partners(client, users, involve, rector):
    client.force_login(scoped_manager(involve))
    form = client.get("/admin/health/healthsettings/add/").content.decode()
    assert "involve_asia" in form and "rector" not in form

    def add(partner: Partner, overrides: str):
        return client.post("/admin/health/healthsettings/add/", {"partner": partner.pk, "overrides": overrides})

    assert "Not a rule: quiet" in add(involve, '{"quiet": {"enabled": false}}').content.decode()
    assert "Each rule takes a JSON object" in add(involve, '{"silent": 60}').content.decode()
    assert add(rector, '{"silent": {"floor_minutes": 60}}').status_code == 200  # not a choice: the form again
    assert not HealthSettings.objects.exists()

    assert add(involve, '{"silent": {"floor_minutes": 60}, "drop": {"enabled": false}}').status_code == 302
    assert HealthSettings.objects.get().overrides == {"silent": {"floor_minutes": 60}, "drop": {"enabled": False}}
    others = HealthSettings.objects.create(partner=rector, overrides={})
    assert client.get(f"/admin/health/healthsettings/{others.pk}/change/").status_code == 404


def test_the_health_page_of_1000_partners_costs_the_same_queries_as_of_two(client, users):
    now = timezone.now()

    def partners(start: int, count: int) -> list[Partner]:
        return Partner.objects.bulk_create(
            Partner(
                partner_code=f"p{n:04d}",
                partner_name=f"Partner {n:04d}",
                endpoint_path=f"/p{n:04d}/event",
                database_name=f"p{n:04d}_db",
            )
            for n in range(start, start + count)
        )

    def add_health(made: list[Partner]) -> None:
        PartnerHealth.objects.bulk_create(
            PartnerHealth(
                partner=partner,
                light=("green", "amber", "red")[n % 3],
                last_received_at=now,
                checked_at=now,
                signals=signals(now),
            )
            for n, partner in enumerate(made)
            if n % 10  # every tenth never checked
        )
        Incident.objects.bulk_create(
            Incident(partner=partner, rule=rule, summary=f"{rule} of {partner.partner_code}")
            for partner in made[::4]
            for rule in ("silent", "invalid_spike")
        )

    def queries_and_rows() -> tuple[int, list]:
        with CaptureQueriesContext(connection) as queries:
            rows = health_rows(client.get(HEALTH_PAGE))
        return len(queries), rows

    add_health(partners(0, 2))
    client.force_login(users["manager"])
    few, _ = queries_and_rows()
    add_health(partners(2, 998))
    many, rows = queries_and_rows()

    assert len(rows) == 1000
    assert [row["light"] for row in rows[:1]] == ["red"] and rows[-1]["light"] == "unchecked"
    assert many == few <= 12, f"{many} queries for 1,000 partners, {few} for 2"
    assert (
        sum(row["cells"][-2].count("silent") for row in rows) == Incident.objects.filter(rule="silent").count() == 251
    )


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_page_says_when_the_checker_has_stopped(client, users, involve):
    health = health_of(involve, "green")
    client.force_login(users["root"])
    assert 'id="health-late"' not in client.get(HEALTH_PAGE).content.decode()

    PartnerHealth.objects.filter(pk=health.pk).update(checked_at=timezone.now() - datetime.timedelta(hours=2))

    page = client.get(HEALTH_PAGE).content.decode()
    assert 'id="health-late"' in page and "has not run for a while" in page
