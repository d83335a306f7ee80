"""The runs list filters on a run's state (the shared choice filter of conversions.admin.base)."""

import datetime
import re

import pytest

from reconciliation.models import ReconciliationRun

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])


def test_runs_filter_by_state(client, users, involve):
    client.force_login(users["root"])
    runs = ReconciliationRun.objects.using(involve.database_alias)
    day = datetime.date(2025, 3, 1)
    for state in (ReconciliationRun.DONE, ReconciliationRun.FAILED):
        runs.create(partner_id=involve.pk, source_name=f"src-{state}", date_from=day, date_to=day, state=state)
    url = "/admin/reconciliation/reconciliationrun/?partner=involve_asia"

    def listed(query: str) -> list[str]:
        return re.findall(r"src-(\w+)", client.get(url + query).content.decode())

    assert sorted(set(listed(""))) == ["done", "failed"]
    assert set(listed("&state=failed")) == {"failed"}
    assert set(listed("&state=running")) == set()
