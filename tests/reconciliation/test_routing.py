"""Report sources live in `default`; runs and their rows in each partner's database."""

import datetime

import pytest
from django.db import connections

from infra.databases import PartnerDatabaseRequired, PartnerDatabaseRouter
from reconciliation.models import ReconciliationRow, ReconciliationRun, ReportSource

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])


def test_each_model_lands_on_its_side(involve):
    default_tables = connections["default"].introspection.table_names()
    partner_tables = connections[involve.database_alias].introspection.table_names()

    assert "report_sources" in default_tables and "report_sources" not in partner_tables
    for table in ("reconciliation_runs", "reconciliation_rows", "partner_conversions", "partner_conversion_changes"):
        assert table in partner_tables and table not in default_tables

    router = PartnerDatabaseRouter()
    assert router.allow_migrate("default", "reconciliation", "reportsource")
    assert not router.allow_migrate(involve.database_alias, "reconciliation", "reportsource")
    for app_label, model in (
        ("reconciliation", "reconciliationrun"),
        ("reconciliation", "reconciliationrow"),
        ("conversions", "partnerconversion"),
        ("conversions", "conversionchange"),
        ("conversions", "dailycounter"),
    ):
        assert router.allow_migrate(involve.database_alias, app_label, model)
        assert not router.allow_migrate("default", app_label, model)


def test_a_query_that_does_not_name_the_partner_database_fails_loudly(involve):
    ReportSource.objects.create(partner=involve, name="CSV")
    assert ReportSource.objects.count() == 1  # configuration: `default`, no alias needed
    with pytest.raises(PartnerDatabaseRequired):
        ReconciliationRun.objects.count()
    with pytest.raises(PartnerDatabaseRequired):
        ReconciliationRow.objects.count()
    run = ReconciliationRun.objects.using(involve.database_alias).create(
        partner_id=involve.pk, date_from=datetime.date(2025, 1, 1), date_to=datetime.date(2025, 1, 1)
    )
    assert run._state.db == involve.database_alias
