from django.apps import AppConfig
from django.db import connections
from django.db.models.signals import post_migrate, pre_migrate


def _sets_timeouts(connection) -> bool:
    # Only what the connection set itself is lifted: behind a transaction pooler the
    # timeouts live on the role, and a SET would outlive this session.
    return connection.vendor == "postgresql" and "statement_timeout" in connection.settings_dict["OPTIONS"].get(
        "options", ""
    )


def _lift_timeouts(*, using: str, **kwargs) -> None:
    # The request path's statement/lock timeouts must not kill a long migration.
    connection = connections[using]
    if _sets_timeouts(connection):
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = 0")
            cursor.execute("SET lock_timeout = 0")


def _restore_timeouts(*, using: str, **kwargs) -> None:
    connection = connections[using]
    if _sets_timeouts(connection):
        with connection.cursor() as cursor:
            cursor.execute("RESET statement_timeout")
            cursor.execute("RESET lock_timeout")


class PartnersConfig(AppConfig):
    name = "partners"
    verbose_name = "Partners"

    def ready(self) -> None:
        from infra.databases.requests import request_edges_install

        request_edges_install()
        pre_migrate.connect(_lift_timeouts, dispatch_uid="partners.lift_timeouts")
        post_migrate.connect(_restore_timeouts, dispatch_uid="partners.restore_timeouts")
