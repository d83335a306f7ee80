"""`python manage.py init_partners`: idempotent bootstrap of a fresh install.

It is the documented first-boot step of every deployment (the Cloud Run job that
deploy_multi_partner.sh runs before the services, `docker run ... python manage.py
init_partners`, `make run`), so several may start at once: on PostgreSQL they take
turns on an advisory lock of the configuration database.
"""

import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from infra.databases import PartnerDatabaseUnavailable, ProvisionResult, database_create_if_missing
from partners.models import Partner
from partners.services import SEED_PARTNERS, admin_groups_ensure, partner_provision, partner_seed

# pg_advisory_lock key of init_partners: the first 8 bytes of "postback" read as a signed integer.
INIT_LOCK_KEY = int.from_bytes(b"postback", "big", signed=True)
LOCK_POLL_SECONDS = 0.5


class Command(BaseCommand):
    help = (
        "Migrate the configuration database, create the seed partners if absent (never "
        "changing existing ones) and create + migrate every active partner's database."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--jobs",
            type=int,
            default=8,
            help="partners provisioned at once (default 8; a schema's tables cost the server more waiting than CPU)",
        )
        parser.add_argument(
            "--lock-timeout",
            type=float,
            default=600.0,
            help="seconds to wait for another init_partners on the same configuration database (default 600)",
        )

    def handle(self, *args, **options) -> None:
        try:
            try:
                created = database_create_if_missing(DEFAULT_DB_ALIAS)
            except PartnerDatabaseUnavailable:
                # A concurrent first run may have created it between our look and our CREATE
                # DATABASE (PostgreSQL then reports a unique violation); a real cause fails again.
                created = database_create_if_missing(DEFAULT_DB_ALIAS)
        except PartnerDatabaseUnavailable as exc:
            raise CommandError(f"configuration database: {exc.reason}") from exc
        if created:
            self.stdout.write("default: database created")
        with self._init_lock(options["lock_timeout"]):
            self._initialise(jobs=max(1, options["jobs"]))
        self.stdout.write(self.style.SUCCESS("init_partners: done"))

    @contextmanager
    def _init_lock(self, timeout: float) -> Iterator[None]:
        """Hold the configuration database's init lock (PostgreSQL; SQLite serves one machine)."""
        connection = connections[DEFAULT_DB_ALIAS]
        if connection.vendor != "postgresql":
            yield
            return
        # Polled, not a blocking pg_advisory_lock: the connection's statement timeout would cut that wait.
        deadline = time.monotonic() + timeout
        waiting = False
        while True:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [INIT_LOCK_KEY])
                if cursor.fetchone()[0]:
                    break
            if not waiting:
                self.stdout.write("waiting for another init_partners on this configuration database...")
                waiting = True
            if time.monotonic() > deadline:
                raise CommandError(f"another init_partners still holds the configuration database after {timeout:g}s")
            time.sleep(LOCK_POLL_SECONDS)
        try:
            yield
        finally:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [INIT_LOCK_KEY])
            except DatabaseError:
                pass  # the lock ends with the session anyway; the error that got us here matters more

    def _initialise(self, *, jobs: int) -> None:
        migrate_output = io.StringIO()
        call_command("migrate", database=DEFAULT_DB_ALIAS, interactive=False, verbosity=1, stdout=migrate_output)
        applied = migrate_output.getvalue().count(" OK")
        self.stdout.write(f"default: {'applied ' + str(applied) + ' migration(s)' if applied else 'schema up to date'}")

        created_groups = admin_groups_ensure()
        self.stdout.write(f"admin groups: {', '.join(created_groups) + ' created' if created_groups else 'up to date'}")

        for definition in SEED_PARTNERS:
            result = partner_seed(definition=definition)
            state = "created" if result.created else "exists, left unchanged"
            self.stdout.write(f"partner {result.partner.partner_code} ({result.partner.endpoint_path}): {state}")

        failures = []
        started = time.monotonic()
        partners = list(Partner.objects.filter(is_active=True).order_by("partner_code"))
        total = len(partners)
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="provision") as pool:
            for done, (partner, outcome) in enumerate(pool.map(_provision, partners), start=1):
                if isinstance(outcome, PartnerDatabaseUnavailable):
                    failures.append(partner.partner_code)
                    self.stderr.write(f"[{done}/{total}] database {outcome.alias}: FAILED: {outcome.reason}")
                else:
                    self.stdout.write(f"[{done}/{total}] database {outcome.describe()}")
        provisioned = total - len(failures)
        self.stdout.write(f"provisioned {provisioned} partner database(s) in {time.monotonic() - started:.1f} s")
        if failures:
            raise CommandError(f"could not provision: {', '.join(failures)}")


def _provision(partner: Partner) -> tuple[Partner, ProvisionResult | PartnerDatabaseUnavailable]:
    """Provision one partner on a pool thread, giving back the thread's connections."""
    try:
        return partner, partner_provision(partner=partner)
    except PartnerDatabaseUnavailable as exc:
        return partner, exc
    finally:
        connections.close_all()
