"""Safe settings: `check --deploy` is clean with the documented production env, and
production refuses to start without a real SECRET_KEY or ALLOWED_HOSTS."""

import subprocess
import sys

from tests.e2e.server import PROJECT_DIR, service_env

# The production environment README.md documents (Cloud Run behind its HTTPS front end).
PRODUCTION_ENV = {
    "POSTBACK_ENV": "production",
    "SECRET_KEY": "3q8Zr-Tn1xV0bL7mYc2KfW9sGd4HpJe6UaQo5iRt_Bz8NkXv0Mw",
    "ALLOWED_HOSTS": "postback.example.com,.a.run.app",
    "CSRF_TRUSTED_ORIGINS": "https://postback.example.com",
    "TRUSTED_PROXY_COUNT": "1",
    "DATABASE_URL": "postgres://root@127.0.0.1:5432/postback",
    "PARTNER_DATABASE_URL": "postgres://root@127.0.0.1:5432/{name}",
}


def run_manage(env: dict[str, str | None], *args: str) -> subprocess.CompletedProcess:
    """manage.py with `env` over a clean environment (a None value: the variable unset)."""
    # Start from a clean environment so a developer's own variables do not leak in.
    clean = {key: value for key, value in service_env().items() if key not in {"SECRET_KEY", "DEBUG", "K_SERVICE"}}
    merged = {key: value for key, value in {**clean, **env}.items() if value is not None}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT_DIR,
        env=merged,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_the_documented_production_env():
    result = run_manage(PRODUCTION_ENV, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_settings_are_https_only():
    code = (
        "from django.conf import settings as s;"
        "print(s.DEBUG, s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE,"
        " s.SECURE_HSTS_SECONDS, s.SECURE_PROXY_SSL_HEADER, s.ALLOWED_HOSTS)"
    )
    result = run_manage(PRODUCTION_ENV, "shell", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == (
        "False True True True 31536000 ('HTTP_X_FORWARDED_PROTO', 'https') ['postback.example.com', '.a.run.app']"
    )


def test_production_without_secret_key_refuses_to_start():
    env = {key: value for key, value in PRODUCTION_ENV.items() if key != "SECRET_KEY"}
    result = run_manage(env, "check")
    assert result.returncode != 0
    assert "SECRET_KEY is required with POSTBACK_ENV=production" in result.stderr


def test_cloud_run_counts_as_production():
    env = {key: value for key, value in PRODUCTION_ENV.items() if key not in {"SECRET_KEY", "POSTBACK_ENV"}}
    result = run_manage({**env, "K_SERVICE": "bytec-public-postback"}, "check")
    assert result.returncode != 0
    assert "SECRET_KEY is required" in result.stderr


def test_production_without_allowed_hosts_refuses_to_start():
    env = {key: value for key, value in PRODUCTION_ENV.items() if key != "ALLOWED_HOSTS"}
    result = run_manage(env, "check")
    assert result.returncode != 0
    assert "ALLOWED_HOSTS is required" in result.stderr


def test_the_default_is_plain_http_development_with_debug_off(tmp_path):
    code = "from django.conf import settings as s; print(s.DEBUG, s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE)"
    result = run_manage({"DATABASE_URL": f"sqlite:///{tmp_path}/d.sqlite3"}, "shell", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False False False"


def test_https_redirect_spares_health_probes_and_trusts_the_proxy_scheme(client, involve, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    plain = client.get("/partner/involve/event?conversion_id=r1")
    assert plain.status_code == 301 and plain["Location"].startswith("https://")
    assert client.get("/health").status_code == 200
    proxied = client.get("/partner/involve/event?conversion_id=r1", HTTP_X_FORWARDED_PROTO="https")
    assert proxied.status_code == 200


def test_a_sqlite_partner_template_without_name_is_refused_at_start():
    from django.test import override_settings

    from postback_site.checks import partner_storage_check

    with override_settings(PARTNER_DATABASE_URL="sqlite:///var/partners.sqlite3"):
        assert [message.id for message in partner_storage_check()] == ["postback_site.E003"]
    with override_settings(PARTNER_DATABASE_URL="postgres://root@127.0.0.1:5432/partners"):
        assert partner_storage_check() == []
    with override_settings(PARTNER_DATABASE_URL="sqlite:///var/{name}.sqlite3"):
        assert partner_storage_check() == []


def test_production_reads_need_a_token_and_refuse_to_open_them_to_loopback():
    result = run_manage(
        {**PRODUCTION_ENV, "LOOPBACK_READS_WITHOUT_TOKEN": None},
        "shell",
        "-c",
        "from django.conf import settings; print(settings.LOOPBACK_READS_WITHOUT_TOKEN)",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"
    refused = run_manage({**PRODUCTION_ENV, "LOOPBACK_READS_WITHOUT_TOKEN": "true"}, "check")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "Configuration error: LOOPBACK_READS_WITHOUT_TOKEN cannot be on with POSTBACK_ENV=production"
    )


def test_loopback_reads_are_off_unless_asked_and_never_behind_a_proxy():
    result = run_manage(
        {"POSTBACK_ENV": "development", "LOOPBACK_READS_WITHOUT_TOKEN": None},
        "shell",
        "-c",
        "from django.conf import settings; print(settings.LOOPBACK_READS_WITHOUT_TOKEN)",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"
    refused = run_manage(
        {"POSTBACK_ENV": "development", "LOOPBACK_READS_WITHOUT_TOKEN": "true", "TRUSTED_PROXY_COUNT": "1"}, "check"
    )
    assert refused.returncode == 1
    assert "cannot be on with TRUSTED_PROXY_COUNT" in refused.stderr


def test_a_mistyped_database_url_is_one_line_naming_the_variable():
    cases = {
        ("DATABASE_URL", "postgress://root@127.0.0.1:5432/postback"): "has 'postgress://'",
        ("DATABASE_URL", "not-a-url"): "has no scheme",
        ("DATABASE_URL", "postgres://root:hunter2-secret@127.0.0.1:5432/"): "names no database",
        ("DATABASE_URL", "postgres://root:hunter2-secret@127.0.0.1:54x2/postback"): "has an invalid port",
        ("PARTNER_DATABASE_URL", "mysql://root@127.0.0.1/{name}"): "has 'mysql://'",
    }
    for (name, url), said in cases.items():
        result = run_manage({name: url}, "check")
        assert result.returncode == 1, (url, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Configuration error: {name} {said}"), (url, result.stderr)
        assert "hunter2" not in result.stderr
