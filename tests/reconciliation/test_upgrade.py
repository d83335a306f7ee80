"""An install made before reconciliation became its own app upgrades with `migrate`, keeping
its report sources, the groups' permissions on them and the admin's history."""

import sqlite3

import pytest

from tests.e2e.server import manage, service_env

pytestmark = pytest.mark.e2e


def test_an_install_from_before_the_app_keeps_its_sources_and_grants(tmp_path):
    env = service_env(
        DATABASE_URL=f"sqlite:///{tmp_path}/default.sqlite3",
        PARTNER_DATABASE_URL=f"sqlite:///{tmp_path}/{{name}}.sqlite3",
    )
    # The configuration database as the release before left it: the reconciliation
    # models still in the conversions app (its migrations 0006-0009).
    for app, migration in (("partners", "0005"), ("conversions", "0009")):
        done = manage(env, "migrate", app, migration, "--verbosity", "0")
        assert done.returncode == 0, done.stderr
    db = sqlite3.connect(tmp_path / "default.sqlite3")
    assert db.execute("SELECT name FROM django_migrations WHERE app = 'reconciliation'").fetchall() == []
    (content_type,) = db.execute(
        "SELECT id FROM django_content_type WHERE app_label = 'conversions' AND model = 'reportsource'"
    ).fetchone()
    _insert(
        db, "partners", partner_code="acme", partner_name="Acme", endpoint_path="/acme/event", database_name="acme_db"
    )
    _insert(db, "report_sources", partner_id=1, name="Monthly CSV", kind="csv")
    db.execute("INSERT INTO auth_group (name) VALUES ('Report readers')")
    (permission,) = db.execute(
        "SELECT id FROM auth_permission WHERE content_type_id = ? AND codename = 'view_reportsource'", [content_type]
    ).fetchone()
    (group,) = db.execute("SELECT id FROM auth_group WHERE name = 'Report readers'").fetchone()
    db.execute("INSERT INTO auth_group_permissions (group_id, permission_id) VALUES (?, ?)", [group, permission])
    db.commit()

    upgraded = manage(env, "migrate", "--verbosity", "0")
    assert upgraded.returncode == 0, upgraded.stderr

    assert db.execute("SELECT name FROM report_sources").fetchall() == [("Monthly CSV",)]
    # The same content type, now the app's: every grant and admin log entry on it follows.
    assert db.execute("SELECT app_label FROM django_content_type WHERE id = ?", [content_type]).fetchone() == (
        "reconciliation",
    )
    assert db.execute("SELECT count(*) FROM django_content_type WHERE model = 'reportsource'").fetchone() == (1,)
    granted = db.execute(
        "SELECT ct.app_label, p.codename FROM auth_group_permissions gp"
        " JOIN auth_permission p ON p.id = gp.permission_id JOIN django_content_type ct ON ct.id = p.content_type_id"
        " WHERE gp.group_id = ?",
        [group],
    ).fetchall()
    assert granted == [("reconciliation", "view_reportsource")]
    check = manage(env, "makemigrations", "--check", "--dry-run")
    assert check.returncode == 0, check.stdout + check.stderr


def _insert(db: sqlite3.Connection, table: str, **values) -> None:
    # The row as that release's schema has it: every other NOT NULL column gets a plain value of its type.
    (schema,) = db.execute("SELECT sql FROM sqlite_master WHERE name = ?", [table]).fetchone()
    for _, name, kind, not_null, default, primary in db.execute(f"PRAGMA table_info({table})").fetchall():
        if name in values or primary or not not_null or default is not None:
            continue
        kind = kind.lower()
        if "int" in kind or "bool" in kind or "real" in kind or "decimal" in kind:
            values[name] = 0
        elif f'JSON_VALID("{name}")' in schema:
            values[name] = "[]" if name in ("status_transitions", "row_order") else "{}"
        elif "datetime" in kind:
            values[name] = "2026-01-01 00:00:00"
        else:
            values[name] = ""
    columns = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(values.values()))  # noqa: S608


@pytest.mark.parametrize(
    "old, new",
    [
        ("/admin/conversions/reportsource/", "/admin/reconciliation/reportsource/"),
        ("/admin/conversions/reportsource/7/reconcile/", "/admin/reconciliation/reportsource/7/reconcile/"),
        (
            "/admin/conversions/reconciliationrow/?partner=involve_asia&run=3",
            "/admin/reconciliation/reconciliationrow/?partner=involve_asia&run=3",
        ),
        ("/admin/conversions/reconciliationrun/3/csv/", "/admin/reconciliation/reconciliationrun/3/csv/"),
    ],
)
def test_the_old_admin_addresses_lead_to_the_apps_own(client, old, new):
    response = client.get(old)
    assert (response.status_code, response["Location"]) == (301, new)
    assert client.get("/admin/conversions/partnerconversion/").status_code != 301  # conversions' own stay
