"""The database router: configuration in `default`, partners' data in their own databases.

An app says which of its models live in every partner's database, in its
AppConfig.ready(): `partner_models_register("conversions")` for a whole app, or
`partner_models_register("publishers", "delivery", "deliveryattempt")` for some models.
Everything else lives in `default`. Provisioning migrates the apps that have partner
models on every partner database; the router keeps each model on its side.
"""

from django.db import DEFAULT_DB_ALIAS

# app label -> its model names in partner databases, or None for all of the app's models.
_partner_models: dict[str, frozenset[str] | None] = {}


class PartnerDatabaseRequired(LookupError):
    """A query on a partner-database model did not name its partner database."""


def partner_models_register(app_label: str, *model_names: str) -> None:
    """Declare that `app_label`'s models (or only `model_names`) live in partner databases."""
    _partner_models[app_label] = frozenset(name.lower() for name in model_names) if model_names else None


def partner_app_labels() -> frozenset[str]:
    """Apps with models in partner databases (what provisioning migrates there)."""
    return frozenset(_partner_models)


def in_partner_database(app_label: str, model_name: str | None) -> bool:
    """Whether the model lives in partner databases (an operation of no model: its app has one)."""
    if app_label not in _partner_models:
        return False
    names = _partner_models[app_label]
    return names is None or model_name is None or model_name.lower() in names


class PartnerDatabaseRouter:
    """`default` holds configuration; partner models live in partner databases.

    Queries name their alias with `.using(alias)`; Django gives routers no hint on plain
    reads, so a partner model's query without an alias fails loudly instead of touching
    `default`.
    """

    def _partner_db(self, model, **hints) -> str | None:
        if not in_partner_database(model._meta.app_label, model._meta.model_name):
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
        if in_partner_database(app_label, model_name):
            return db != DEFAULT_DB_ALIAS
        return db == DEFAULT_DB_ALIAS
