"""The database router: configuration in `default`, conversions in partner databases."""

from django.db import DEFAULT_DB_ALIAS

PARTNER_APP_LABELS = frozenset({"conversions"})


class PartnerDatabaseRequired(LookupError):
    """A conversions query did not name its partner database."""


class PartnerDatabaseRouter:
    """`default` holds configuration; the conversions app lives in partner databases.

    Queries name their alias with `.using(alias)`; Django gives routers no hint on plain
    reads, so a conversions query without an alias fails loudly instead of touching
    `default`.
    """

    def _partner_db(self, model, **hints) -> str | None:
        if model._meta.app_label not in PARTNER_APP_LABELS:
            return None
        instance = hints.get("instance")
        if instance is not None and instance._state.db:
            return instance._state.db
        raise PartnerDatabaseRequired(
            f"{model.__name__} lives in a partner database: query it with .using(partner.database_alias)"
        )

    db_for_read = _partner_db
    db_for_write = _partner_db

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints) -> bool:
        if app_label in PARTNER_APP_LABELS:
            return db != DEFAULT_DB_ALIAS
        return db == DEFAULT_DB_ALIAS
