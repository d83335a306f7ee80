"""What a process keeps between requests is registered in one place and forgotten at once."""

from infra.state import process_state_names, process_state_reset


def test_every_cache_ledger_and_breaker_is_registered():
    import postback_site.urls  # noqa: F401  (imports every view, as a served process has)

    assert set(process_state_names()) >= {
        "partners.partner_directory",
        "publishers.publisher_directory",
        "conversions.quota_ledger",
        "conversions.quota_redis_breaker",
        "conversions.refusal_ledger",
        "conversions.recently_stored",
        "infra.database_breakers",
        "postback_site.health_migrated",
    }


def test_a_reset_forgets_what_the_process_kept():
    from infra.databases.breaker import _guards, database_guard

    database_guard("default")
    assert _guards
    process_state_reset()
    assert not _guards
