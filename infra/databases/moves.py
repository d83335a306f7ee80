"""Moving a partner's storage online: its tables copied from one PostgreSQL location (a
database of its own, or a schema of a shared one) to another while postbacks keep landing.

The database half of `move_partner` (partners/moves.py resolves the partner, provisions the
target and switches the partner over). A `StorageMove` works with two psycopg connections
as the login role (a member of every partner role), naming every table with its schema:

1. capture  an AFTER INSERT/UPDATE/DELETE trigger on every partner table at the source
            records the id of each row written from now on (`partner_move_changes`);
            TRUNCATE records the whole table. Only partner_conversions has an updated_at:
            deliveries, reconciliation rows and counters change without one, and deletes
            (retention, reconciliation re-runs) leave no trace in what remains, so the
            source says itself what changed.
2. bulk     every table, parents first, in id order, batch by batch, from one snapshot of
            the source (REPEATABLE READ), with binary COPY, ids kept.
3. catch up rows recorded since are deleted at the target and copied again from one
            snapshot of the source per round (the log read and the rows in the same
            snapshot): after a round the target is the source as of that snapshot.
4. fence    in one transaction, every partner table locked (in-flight writes commit
            first) and given a BEFORE trigger that raises STORAGE_MOVED_SQLSTATE for any
            write, superusers' too; `storage_moved(error)` recognises it.
5. last     the last round (nothing is written at the source any more), the capture
            removed, identity sequences set past the source's, counts compared.

The target is served by nobody until the partner is switched, so between the fence and the
switch both sides are frozen and their counts must match. `abort()` undoes a move that
failed before the switch: the source unfenced, the target emptied.
"""

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.apps import apps

from infra.databases.config import POSTGRES_ENGINES
from infra.databases.registry import alias_settings
from infra.databases.router import in_partner_database
from infra.errors import error_first_line
from infra.masking import url_mask_password

logger = logging.getLogger("partners.databases")

# What a write to a moved partner's old storage fails with (a custom SQLSTATE: class "PB").
STORAGE_MOVED_SQLSTATE = "PBMOV"
FENCE_FUNCTION = "partner_storage_moved"
CAPTURE_FUNCTION = "partner_move_capture"
CAPTURE_TABLE = "partner_move_changes"
# Rounds of changes are copied without the fence until one is this small (at most this many).
CATCH_UP_ENOUGH = 100
CATCH_UP_ROUNDS = 10
# How long the fence (and the capture) waits for the tables' in-flight writes, per attempt:
# writers queue behind the wait, so it is short and tried again.
LOCK_TIMEOUT = "3s"
LOCK_ATTEMPTS = 4
# Connection options of a URL that libpq takes as they are.
_LIBPQ_OPTIONS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "application_name")


def storage_moved(error: BaseException | None) -> bool:
    """Whether `error`, or an error that caused it, is the fence of a moved partner storage."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if getattr(error, "sqlstate", None) == STORAGE_MOVED_SQLSTATE:
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


class StorageMoveFailed(Exception):
    """A move could not be done as asked; nothing was switched."""


@dataclass(frozen=True)
class StorageLocation:
    """Where a partner's tables are: a URL and the database settings it gives."""

    url: str
    config: dict[str, Any]

    @property
    def is_postgres(self) -> bool:
        return self.config["ENGINE"] in POSTGRES_ENGINES

    @property
    def schema(self) -> str:
        """The partner's schema in a shared database, or "" (a database of its own)."""
        return self.config.get("SCHEMA", "")

    @property
    def role(self) -> str:
        return self.config.get("ROLE", "")

    @property
    def key(self) -> tuple[str, ...]:
        """The same for two URLs of one place (the server's default host and port filled in)."""
        config = self.config
        if not self.is_postgres:
            return (config["ENGINE"], config["NAME"])
        return ("postgresql", config["HOST"] or "localhost", config["PORT"] or "5432", config["NAME"], self.schema)

    @property
    def server(self) -> str:
        return f"{self.config['HOST'] or 'localhost'}:{self.config['PORT'] or 5432}"

    def describe(self) -> str:
        return url_mask_password(self.url)

    def removal(self) -> list[str]:
        """The statements that remove this storage (as the login role)."""
        from psycopg import sql

        name = sql.Identifier(self.config["NAME"]).as_string(None)
        if not self.schema:
            return [f"DROP DATABASE {name};  -- on {self.server}"]
        statements = [f"DROP SCHEMA {sql.Identifier(self.schema).as_string(None)} CASCADE;  -- in database {name}"]
        if self.role:
            statements.append(f"DROP ROLE {sql.Identifier(self.role).as_string(None)};  -- on {self.server}")
        return statements


def storage_location(url: str) -> StorageLocation:
    return StorageLocation(url=url, config=alias_settings(url))


@dataclass(frozen=True)
class PartnerTable:
    """One table of every partner's storage, with the columns copied."""

    name: str
    columns: tuple[str, ...]


def partner_tables() -> list[PartnerTable]:
    """The tables of the models that live in partner storage (router.partner_models_register),
    each after the partner tables its foreign keys point at."""
    models = {}
    for model in apps.get_models(include_auto_created=True):
        meta = model._meta
        if meta.proxy or not meta.managed or not in_partner_database(meta.app_label, meta.model_name):
            continue
        models[meta.db_table] = model
    ordered: list[str] = []

    def visit(table: str, path: tuple[str, ...]) -> None:
        if table in ordered or table in path:
            return
        for field in models[table]._meta.concrete_fields:
            parent = field.related_model._meta.db_table if field.is_relation and field.related_model else None
            if parent in models and parent != table:
                visit(parent, (*path, table))
        ordered.append(table)

    for table in sorted(models):
        visit(table, ())
    return [
        PartnerTable(name=table, columns=tuple(field.column for field in models[table]._meta.concrete_fields))
        for table in ordered
    ]


@dataclass(frozen=True)
class TableCount:
    table: str
    source: int
    target: int
    source_max_id: int
    target_max_id: int

    @property
    def matches(self) -> bool:
        return self.source == self.target and self.source_max_id == self.target_max_id


class StorageUnreachable(StorageMoveFailed):
    """A location's server did not let us in (down, wrong address or credentials, no database)."""

    def __init__(self, location: StorageLocation, error: Exception) -> None:
        super().__init__(f"cannot reach {location.describe()}: {error_first_line(error)}")
        self.no_database = re.search(r'database ".*" does not exist', str(error)) is not None


def _connect(location: StorageLocation):
    """An autocommit connection to the location's database as the login role (no statement
    is prepared: a pooler in between may not keep them)."""
    import psycopg

    config = location.config
    params = {
        "dbname": config["NAME"],
        "user": config["USER"] or None,
        "password": config["PASSWORD"] or None,
        "host": config["HOST"] or None,
        "port": config["PORT"] or None,
        "connect_timeout": config["OPTIONS"].get("connect_timeout", 5),
        **{name: config["OPTIONS"][name] for name in _LIBPQ_OPTIONS if name in config["OPTIONS"]},
    }
    try:
        connection = psycopg.connect(
            **{name: value for name, value in params.items() if value is not None}, autocommit=True
        )
    except psycopg.OperationalError as exc:
        raise StorageUnreachable(location, exc) from exc
    connection.prepare_threshold = None
    return connection


def storage_tables_with_rows(location: StorageLocation, tables: Iterable[PartnerTable]) -> list[str]:
    """The partner tables at `location` that hold rows (none when its database or schema is
    not there yet). Raises StorageMoveFailed when it cannot be read."""
    import psycopg

    try:
        connection = _connect(location)
    except StorageUnreachable as exc:
        if exc.no_database:
            return []  # provisioning creates it
        raise
    try:
        with connection:
            return _Side(location, connection).tables_with_rows(tables)
    except psycopg.Error as exc:
        raise StorageMoveFailed(f"cannot read {location.describe()}: {error_first_line(exc)}") from exc


class _Side:
    """One end of a move: its location and connection, and its tables' qualified names."""

    def __init__(self, location: StorageLocation, connection) -> None:
        self.location = location
        self.connection = connection
        self.schema = location.schema or connection.execute("SELECT current_schema()").fetchone()[0]

    def name(self, name: str):
        from psycopg import sql

        return sql.Identifier(self.schema, name)

    def text_name(self, name: str) -> str:
        return self.name(name).as_string(self.connection)

    def exists(self, name: str) -> bool:
        return self.connection.execute("SELECT to_regclass(%s) IS NOT NULL", [self.text_name(name)]).fetchone()[0]

    def has_function(self, name: str) -> bool:
        found = self.connection.execute(
            "SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = %s AND p.proname = %s",
            [self.schema, name],
        ).fetchone()
        return found is not None

    def schema_exists(self) -> bool:
        found = self.connection.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [self.schema]).fetchone()
        return found is not None

    def tables_with_rows(self, tables: Iterable[PartnerTable]) -> list[str]:
        from psycopg import sql

        if not self.schema_exists():
            return []
        return [
            table.name
            for table in tables
            if self.exists(table.name)
            and self.connection.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(self.name(table.name))
            ).fetchone()[0]
        ]

    @contextmanager
    def transaction(self, *, snapshot: bool = False, read_only: bool = False, as_owner: bool = False) -> Iterator[Any]:
        """A transaction (REPEATABLE READ with `snapshot`); `as_owner`: as the partner's role,
        so that what it creates belongs to the role that owns the tables."""
        import psycopg

        connection = self.connection
        connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ if snapshot else None
        connection.read_only = True if read_only else None
        try:
            with connection.transaction():
                if as_owner and self.location.role:
                    connection.execute("SELECT set_config('role', %s, true)", [self.location.role])
                yield connection
        finally:
            connection.isolation_level = None
            connection.read_only = None


class StorageMove:
    """The steps of one move between two PostgreSQL locations (see the module doc).

    Use as a context manager (it holds a connection to each side); call the steps in
    order: `refusal`, `capture_start`, `bulk_copy`, `catch_up`, `fence`, `changes_copy`,
    `capture_remove`, `sequences_align`, `counts`; `abort` on any failure before the switch.
    """

    def __init__(
        self,
        *,
        source: StorageLocation,
        target: StorageLocation,
        tables: list[PartnerTable],
        batch_size: int = 5000,
        say: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.source_location = source
        self.target_location = target
        self.tables = tables
        self.batch_size = batch_size
        self.say = say
        self.copied = 0  # rows written at the target, bulk and changes
        self.fenced_at: float | None = None
        self._captured = False
        self._target_written = False

    def __enter__(self) -> "StorageMove":
        self.source = _Side(self.source_location, _connect(self.source_location))
        try:
            self.target = _Side(self.target_location, _connect(self.target_location))
        except BaseException:
            self.source.connection.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.source.connection.close()
        self.target.connection.close()

    # --- 1. before anything changes --------------------------------------------------

    def refusal(self) -> str | None:
        """Why this move must not start, or None."""
        import psycopg

        try:
            return self._refusal()
        except psycopg.Error as exc:
            return f"cannot inspect the source and target: {error_first_line(exc)}"

    def _refusal(self) -> str | None:
        source, target = self.source, self.target
        missing = [table.name for table in self.tables if not source.exists(table.name)]
        if missing:
            return f"the source {source.location.describe()} has no table {', '.join(missing)}: is it provisioned?"
        if source.has_function(FENCE_FUNCTION):
            return (
                f"the source {source.location.describe()} is fenced by a move_partner that did not finish, so the "
                f"partner's postbacks are answered 503: run `DROP FUNCTION {source.text_name(FENCE_FUNCTION)}() "
                "CASCADE;` on it to serve the partner there again, then empty the target and move again"
            )
        if source.exists(CAPTURE_TABLE):
            return (
                "another move_partner of this partner is running, or one was interrupted; if none is running, "
                f"remove its leftovers at the source: `DROP FUNCTION {source.text_name(CAPTURE_FUNCTION)}() CASCADE; "
                f"DROP TABLE {source.text_name(CAPTURE_TABLE)};`"
            )
        if target.has_function(FENCE_FUNCTION):
            return (
                f"the target {target.location.describe()} is the fenced source of an earlier move: "
                f"remove it first ({' '.join(target.location.removal())})"
            )
        occupied = target.tables_with_rows(self.tables)
        if occupied:
            return f"the target {target.location.describe()} is not empty: {', '.join(occupied)} hold rows"
        missing = [table.name for table in self.tables if not target.exists(table.name)]
        if missing:
            return f"the target {target.location.describe()} has no table {', '.join(missing)}: is it provisioned?"
        return None

    # --- 2. capture and bulk copy ------------------------------------------------------

    def capture_start(self) -> None:
        """Record, at the source, every row written from now on (see the module doc)."""
        from psycopg import errors, sql

        source = self.source
        log = source.name(CAPTURE_TABLE)
        function = source.name(CAPTURE_FUNCTION)
        statements = [
            sql.SQL("CREATE TABLE {} (table_name text NOT NULL, row_id bigint)").format(log),
            sql.SQL(
                "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $body$ BEGIN "
                "IF TG_LEVEL = 'STATEMENT' THEN INSERT INTO {log} VALUES (TG_TABLE_NAME, NULL); "
                "ELSIF TG_OP = 'DELETE' THEN INSERT INTO {log} VALUES (TG_TABLE_NAME, OLD.id); "
                "ELSE INSERT INTO {log} VALUES (TG_TABLE_NAME, NEW.id); END IF; RETURN NULL; END $body$"
            ).format(function=function, log=log),
        ]
        for table in self.tables:
            for trigger, when in (
                (CAPTURE_FUNCTION, "AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW"),
                (f"{CAPTURE_FUNCTION}_truncate", "AFTER TRUNCATE ON {table} FOR EACH STATEMENT"),
            ):
                statements.append(
                    sql.SQL("CREATE TRIGGER {trigger} " + when + " EXECUTE FUNCTION {function}()").format(
                        trigger=sql.Identifier(trigger), table=source.name(table.name), function=function
                    )
                )
        try:
            self._locked(statements)
        except errors.DuplicateTable as exc:
            raise StorageMoveFailed("another move_partner of this partner started at the same time") from exc
        self._captured = True

    def bulk_copy(self) -> int:
        """Copy every table from one snapshot of the source, in id order, `batch_size` rows
        per target transaction; the number of rows copied."""
        from psycopg import sql

        total = 0
        with self.source.transaction(snapshot=True, read_only=True) as source:
            for table in self.tables:
                started = time.monotonic()
                copied, last, reported = 0, 0, started
                name = self.source.name(table.name)
                while True:
                    # The batch ends at its batch_size-th id (or the table's last).
                    upper = source.execute(
                        sql.SQL("SELECT id FROM {} WHERE id > %s ORDER BY id OFFSET %s LIMIT 1").format(name),
                        [last, self.batch_size - 1],
                    ).fetchone()
                    if upper is None:
                        upper = source.execute(sql.SQL("SELECT max(id) FROM {} WHERE id > %s").format(name), [last])
                        upper = upper.fetchone()
                    if upper is None or upper[0] is None:
                        break
                    condition = sql.SQL("id > %s AND id <= %s")
                    with self.target.transaction() as target:
                        copied += self._copy(source, target, table, condition, [last, upper[0]])
                    last = upper[0]
                    if time.monotonic() - reported >= 5:
                        reported = time.monotonic()
                        self.say(f"  {table.name}: {copied:,} rows so far")
                elapsed = time.monotonic() - started
                rate = f" ({copied / elapsed:,.0f} rows/s)" if copied and elapsed > 0 else ""
                self.say(f"copied {copied:,} rows of {table.name} in {elapsed:.2f} s{rate}")
                total += copied
        return total

    def _copy(self, source, target, table: PartnerTable, condition, params: list[Any]) -> int:
        """Copy the source rows that meet `condition`, in id order, into the target (binary COPY)."""
        from psycopg import sql

        columns = sql.SQL(", ").join(sql.Identifier(column) for column in table.columns)
        read = sql.SQL("COPY (SELECT {columns} FROM {table} WHERE {condition} ORDER BY id) TO STDOUT (FORMAT BINARY)")
        write = sql.SQL("COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)")
        self._target_written = True
        with source.cursor() as reading, target.cursor() as writing:
            with (
                reading.copy(
                    read.format(columns=columns, table=self.source.name(table.name), condition=condition), params
                ) as reader,
                writing.copy(write.format(table=self.target.name(table.name), columns=columns)) as writer,
            ):
                for block in reader:
                    writer.write(block)
            copied = max(writing.rowcount, 0)
        self.copied += copied
        return copied

    # --- 3. the changes since ----------------------------------------------------------

    def changes_copy(self) -> int:
        """One round: the rows recorded at the source since the last round, deleted at the
        target and copied again from one snapshot of the source; how many rows."""
        from psycopg import sql

        with self.source.transaction(snapshot=True) as source:
            recorded = source.execute(
                sql.SQL("DELETE FROM {} RETURNING table_name, row_id").format(self.source.name(CAPTURE_TABLE))
            ).fetchall()
            if not recorded:
                return 0
            changed: dict[str, set[int]] = {}
            whole: set[str] = set()
            for table_name, row_id in recorded:
                if row_id is None:
                    whole.add(table_name)
                else:
                    changed.setdefault(table_name, set()).add(row_id)
            rows = 0
            with self.target.transaction() as target:
                for table in reversed(self.tables):  # children first
                    name = self.target.name(table.name)
                    if table.name in whole:
                        target.execute(sql.SQL("DELETE FROM {}").format(name))
                    elif table.name in changed:
                        target.execute(
                            sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(name), [sorted(changed[table.name])]
                        )
                for table in self.tables:
                    if table.name in whole:
                        rows += self._copy(source, target, table, sql.SQL("true"), [])
                        continue
                    ids = sorted(changed.get(table.name, ()))
                    for start in range(0, len(ids), self.batch_size):
                        batch = ids[start : start + self.batch_size]
                        self._copy(source, target, table, sql.SQL("id = ANY(%s::bigint[])"), [batch])
                        rows += len(batch)  # rows deleted at the source count too
        return rows

    def catch_up(self) -> int:
        """Rounds of changes without the fence until one is small (or stops shrinking), so that
        the round behind the fence, while writes are refused, is short."""
        total, previous = 0, None
        for _round in range(CATCH_UP_ROUNDS):
            rows = self.changes_copy()
            total += rows
            if rows <= CATCH_UP_ENOUGH or (previous is not None and rows >= previous):
                break
            previous = rows
        return total

    # --- 4. the fence --------------------------------------------------------------------

    def fence(self) -> None:
        """Make every partner table at the source refuse writes (STORAGE_MOVED_SQLSTATE),
        once the writes in flight have committed; the capture goes with it."""
        from psycopg import sql

        source = self.source
        function = source.name(FENCE_FUNCTION)
        statements = [
            sql.SQL(
                "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $body$ BEGIN "
                "RAISE EXCEPTION 'partner storage moved: % is no longer written here', TG_TABLE_NAME "
                "USING ERRCODE = {code}, HINT = {hint}; END $body$"
            ).format(
                function=function,
                code=sql.Literal(STORAGE_MOVED_SQLSTATE),
                hint=sql.Literal(f"the partner's storage moved to {self.target_location.describe()}"),
            )
        ]
        for table in self.tables:
            name = source.name(table.name)
            for trigger, when in (
                (FENCE_FUNCTION, "BEFORE INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW"),
                (f"{FENCE_FUNCTION}_truncate", "BEFORE TRUNCATE ON {table} FOR EACH STATEMENT"),
            ):
                statements.append(
                    sql.SQL("CREATE TRIGGER {trigger} " + when + " EXECUTE FUNCTION {function}()").format(
                        trigger=sql.Identifier(trigger), table=name, function=function
                    )
                )
            for trigger in (CAPTURE_FUNCTION, f"{CAPTURE_FUNCTION}_truncate"):
                statements.append(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), name))
        self._locked(statements)
        self.fenced_at = time.time()

    def _locked(self, statements: list[Any]) -> None:
        """Run `statements` in one transaction (one round trip) at the source, as the tables'
        owner, after every partner table is locked against writes (SHARE ROW EXCLUSIVE: the
        writes in flight commit first); tried again when the lock is not had in LOCK_TIMEOUT
        or deadlocks."""
        from psycopg import errors, sql

        names = sql.SQL(", ").join(self.source.name(table.name) for table in self.tables)
        script = sql.SQL("; ").join(
            [
                sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)),
                sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(names),
                *statements,
            ]
        )
        for attempt in range(1, LOCK_ATTEMPTS + 1):
            try:
                with self.source.transaction(as_owner=True) as connection:
                    connection.execute(script)
                return
            except (errors.LockNotAvailable, errors.DeadlockDetected) as exc:
                if attempt == LOCK_ATTEMPTS:
                    raise StorageMoveFailed(f"the source's tables stayed busy (a long transaction?): {exc}") from exc
                self.say(f"  the source's tables are busy; trying again ({attempt}/{LOCK_ATTEMPTS - 1})")

    # --- 5. after the fence --------------------------------------------------------------

    def capture_remove(self) -> None:
        """Drop the change log and its function (the fence dropped its triggers)."""
        from psycopg import sql

        with self.source.transaction(as_owner=True) as connection:
            connection.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self.source.name(CAPTURE_TABLE)))
            connection.execute(
                sql.SQL("DROP FUNCTION IF EXISTS {}() CASCADE").format(self.source.name(CAPTURE_FUNCTION))
            )
        self._captured = False

    def sequences_align(self) -> None:
        """Set every identity sequence at the target past the table's last id and past the
        source's sequence, so no id is ever handed out twice."""
        from psycopg import sql

        for table in self.tables:
            source_sequence = self._sequence(self.source, table.name)
            target_sequence = self._sequence(self.target, table.name)
            if target_sequence is None:
                continue
            last = self.target.connection.execute(
                sql.SQL("SELECT coalesce(max(id), 0) FROM {}").format(self.target.name(table.name))
            ).fetchone()[0]
            if source_sequence is not None:
                value, called = self.source.connection.execute(
                    sql.SQL("SELECT last_value, is_called FROM {}").format(sql.SQL(source_sequence))
                ).fetchone()
                last = max(last, value if called else value - 1)
            if last > 0:
                self.target.connection.execute("SELECT setval(%s, %s, true)", [target_sequence, last])

    @staticmethod
    def _sequence(side: _Side, table: str) -> str | None:
        return side.connection.execute("SELECT pg_get_serial_sequence(%s, 'id')", [side.text_name(table)]).fetchone()[0]

    def counts(self) -> list[TableCount]:
        """Rows and last id of every table on both sides."""
        from psycopg import sql

        counts = []
        for table in self.tables:
            statement = sql.SQL("SELECT count(*), coalesce(max(id), 0) FROM {}")
            source = self.source.connection.execute(statement.format(self.source.name(table.name))).fetchone()
            target = self.target.connection.execute(statement.format(self.target.name(table.name))).fetchone()
            counts.append(TableCount(table.name, source[0], target[0], source[1], target[1]))
        return counts

    def source_removal(self, *, database_shared: bool) -> list[str]:
        """The statements that remove the source: its schema and role, or its database; only
        its tables and the fence when it is a database that other partners' storage shares."""
        if self.source_location.schema or not database_shared:
            return self.source_location.removal()
        tables = ", ".join(self.source.text_name(table.name) for table in self.tables)
        name = self.source_location.config["NAME"]
        return [
            f"DROP TABLE {tables};  -- in database {name}, which other partners' storage shares",
            f"DROP FUNCTION {self.source.text_name(FENCE_FUNCTION)}();",
        ]

    # --- a failed move -------------------------------------------------------------------

    def abort(self) -> list[str]:
        """Undo a move that failed before the switch: the source's fence and capture removed,
        the target (empty when the move started) emptied. What could not be undone."""
        from psycopg import sql

        left: list[str] = []
        installed = [FENCE_FUNCTION] if self.fenced_at else []
        installed += [CAPTURE_FUNCTION] if self._captured else []
        try:
            if installed:
                with _connect(self.source_location) as connection:
                    side = _Side(self.source_location, connection)
                    with side.transaction(as_owner=True) as source:
                        for name in installed:  # CASCADE: with the triggers that call it
                            source.execute(sql.SQL("DROP FUNCTION IF EXISTS {}() CASCADE").format(side.name(name)))
                        if self._captured:
                            source.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(side.name(CAPTURE_TABLE)))
                self.fenced_at = None
                self._captured = False
        except Exception as exc:  # reported to the operator, who can run the statements by hand
            logger.exception("could not remove the move's triggers at the source")
            left.append(f"the source's fence and change capture ({exc})")
        if self._target_written:
            try:
                with _connect(self.target_location) as connection:
                    side = _Side(self.target_location, connection)
                    names = sql.SQL(", ").join(side.name(table.name) for table in self.tables)
                    connection.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(names))
                self._target_written = False
            except Exception as exc:  # reported to the operator
                logger.exception("could not empty the move's target")
                left.append(f"the rows copied to the target ({exc})")
        return left
