"""The history of the previous service, imported as originals so dedupe holds on cut-over day.

The previous service kept its conversions in PostgreSQL, in one or both of two tables
(tests/fixtures/legacy/*.sql are their layouts):

- `partner_conversions` (with a `partners` table): the seed's columns, its duplicates
  marked `is_duplicate`, its rejected postbacks with a `processing_error`;
- `conversions` (its root endpoints): `aff_sub`, `usd_payout`, `event_time` or
  `datetime_conversion`, `raw_data` or `raw_parameters`, `partner_id` or `tenant_id`,
  `created_at`, as each deployment had them.

Each table is read in a read-only transaction through a server-side cursor, a batch at a
time. A row goes to our partner whose `partner_code` is the previous service's code for
it (its `partners` row, found by id or by code), or to the one partner named by the
operator; a row without one is counted and skipped, never guessed. Its values are mapped
and coerced as a postback's are (partners.mapping), the columns first, then what the
partner's own mapping reads from its raw parameters (a status, a currency); a value the
pipeline would refuse skips the row, reported. It is written as an original with its
receipt time kept and `imported_at` set, by `INSERT ... ON CONFLICT DO NOTHING` against
the originals' unique index: a conversion already here stays the original, and a second
import adds nothing. Publishers hear of imported conversions only when asked
(`announce`): then each goes through the ingest's hook point as a new original does.
"""

import datetime
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.db import connections, models
from django.utils import timezone
from psycopg import sql
from psycopg.rows import dict_row

from conversions.ingest.decide import partner_postback_map
from conversions.ingest.hooks import Announcement, decision_companions
from conversions.ingest.parse import storable_json
from conversions.ingest.statements import original_insert_with_companions
from conversions.models import ORIGINAL_SQL, PartnerConversion
from infra.databases import binding_cursor, partner_database
from infra.errors import error_first_line
from infra.masking import SECRET_PARAMS, headers_for_storage, secret_masked, url_mask_password
from partners.mapping import CANONICAL_FIELDS, coerce_text, postback_map
from partners.models import Partner

# What brought an imported conversion, for the hook's listeners (a delivery's `source`).
IMPORT_SOURCE = "import"
SKIP_DUPLICATE = "marked duplicate by the previous service"
SKIP_REJECTED = "rejected by the previous service (processing_error)"
SKIP_INVALID = "invalid values"
# Invalid rows told one by one per partner, then only counted.
INVALID_ROWS_SHOWN = 20
# Rows per INSERT statement (fewer where the database takes fewer parameters).
ROWS_PER_STATEMENT = 1000
CONNECT_TIMEOUT_SECONDS = 10


class LegacySourceError(Exception):
    """The previous service's database cannot be read as asked (one line, for the operator)."""


@dataclass(frozen=True)
class LegacyTable:
    """How one of the previous service's tables is read: its columns for each of ours."""

    name: str
    # Our canonical field -> the first of these columns the table has.
    fields: Mapping[str, tuple[str, ...]]
    partner_key: tuple[str, ...]
    raw: tuple[str, ...]
    received: tuple[str, ...]
    headers: tuple[str, ...] = ()
    ip: tuple[str, ...] = ()
    duplicate: tuple[str, ...] = ()
    error: tuple[str, ...] = ()
    order: tuple[str, ...] = ("id", "created_at")


LEGACY_TABLES = (
    LegacyTable(
        name="partner_conversions",
        fields={
            "conversion_id": ("conversion_id",),
            "offer_id": ("offer_id",),
            "offer_name": ("offer_name",),
            "conversion_datetime": ("conversion_datetime",),
            "usd_sale_amount": ("usd_sale_amount",),
            "usd_earning": ("usd_earning",),
            "media_id": ("media_id",),
            "sub_id": ("sub_id",),
            "click_id": ("click_id",),
        },
        partner_key=("partner_id",),
        raw=("raw_data",),
        received=("received_at", "created_at"),
        headers=("request_headers",),
        ip=("request_ip",),
        duplicate=("is_duplicate",),
        error=("processing_error",),
    ),
    LegacyTable(
        name="conversions",
        fields={
            "conversion_id": ("conversion_id",),
            "offer_id": ("offer_id",),
            "offer_name": ("offer_name",),
            "conversion_datetime": ("event_time", "datetime_conversion", "conversion_datetime"),
            "usd_sale_amount": ("usd_sale_amount",),
            "usd_earning": ("usd_payout", "usd_earning"),
            "sub_id": ("aff_sub", "sub_id"),
        },
        partner_key=("partner_id", "tenant_id"),
        raw=("raw_data", "raw_parameters"),
        received=("created_at", "received_at"),
    ),
)


@dataclass
class PartnerTally:
    """What became of one partner's rows."""

    read: int = 0
    imported: int = 0
    present: int = 0
    skipped: Counter = field(default_factory=Counter)
    announced: int = 0
    oldest: datetime.datetime | None = None
    beyond_retention: int = 0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


@dataclass
class ImportReport:
    """A run's figures: per our partner code, and per previous partner key not matched."""

    dry_run: bool
    tables: list[str] = field(default_factory=list)
    partners: dict[str, PartnerTally] = field(default_factory=dict)
    unmatched: Counter = field(default_factory=Counter)
    read: int = 0

    def tally(self, code: str) -> PartnerTally:
        return self.partners.setdefault(code, PartnerTally())

    def lines(self) -> list[str]:
        """The summary, a line per partner (and per previous partner not matched)."""
        imported = "would import" if self.dry_run else "imported"
        lines = [f"tables read: {', '.join(self.tables)}; {self.read} row(s)"]
        for code in sorted(self.partners):
            tally = self.partners[code]
            skipped = ", ".join(f"{count} {reason}" for reason, count in sorted(tally.skipped.items())) or "none"
            line = (
                f"{code}: read {tally.read}, {imported} {tally.imported}, already present {tally.present}, "
                f"skipped {tally.skipped_total} ({skipped})"
            )
            if tally.announced:
                line += f", announced to publishers {tally.announced}"
            if tally.beyond_retention:
                line += (
                    f"; {tally.beyond_retention} received before this partner's retention window "
                    "(the next purge_conversions deletes them)"
                )
            lines.append(line)
        for key, count in sorted(self.unmatched.items(), key=lambda item: str(item[0])):
            lines.append(f"previous partner {key}: {count} row(s) skipped, no partner of ours matches it")
        return lines


@dataclass(frozen=True)
class _Source:
    """A table found in the previous service's database, with the columns it has."""

    spec: LegacyTable
    columns: frozenset[str]

    def column(self, candidates: Sequence[str]) -> str | None:
        return next((name for name in candidates if name in self.columns), None)


@dataclass
class _Row:
    """One row mapped onto our fields, ready to be written."""

    values: dict[str, Any]


Progress = Callable[[str], None]


def legacy_import(
    *,
    url: str,
    partner_code: str | None = None,
    source_partner: str | None = None,
    dry_run: bool = False,
    announce: bool = False,
    batch_size: int = 1000,
    progress: Progress | None = None,
) -> ImportReport:
    """Import the previous service's conversions at `url` into our partners' storage.

    `partner_code`: every row read goes to this partner of ours (`source_partner`: only
    the rows the previous service filed under that partner id or code). Raises
    LegacySourceError when the source cannot be read as asked, and
    PartnerDatabaseUnavailable when a partner's storage refuses a write (what was written
    stays: the import is idempotent, run it again).
    """
    say = progress or (lambda _line: None)
    target = None
    if partner_code is not None:
        target = Partner.objects.filter(partner_code=partner_code).first()
        if target is None:
            raise LegacySourceError(f"--partner {partner_code}: no partner of ours has this code")
    report = ImportReport(dry_run=dry_run)
    started = time.monotonic()
    with _source_connection(url) as conn:
        sources = _sources_detect(conn)
        if not sources:
            raise LegacySourceError(
                f"{_database_named(url)} has neither a partner_conversions nor a conversions table: "
                "is it the previous service's database?"
            )
        old_codes = _previous_partners(conn)
        resolvers = {}
        for source in sources:
            resolvers[source.spec.name] = _resolver(
                conn, source, old_codes=old_codes, target=target, source_partner=source_partner
            )
        writer = _Writer(report=report, dry_run=dry_run, announce=announce, say=say)
        for source in sources:
            report.tables.append(source.spec.name)
            resolve = resolvers[source.spec.name]
            for batch in _rows(conn, source, batch_size=batch_size, source_partner=source_partner):
                report.read += len(batch)
                writer.write(source, batch, resolve)
                say(
                    f"{source.spec.name}: {report.read} row(s) read, "
                    f"{sum(t.imported for t in report.partners.values())} "
                    f"{'would be imported' if dry_run else 'imported'} ({time.monotonic() - started:.1f} s)"
                )
    return report


class _source_connection:  # noqa: N801 (a context manager read as a function)
    """A read-only connection to the previous service's database; LegacySourceError if none."""

    def __init__(self, url: str):
        self.url = url
        self.conn: psycopg.Connection | None = None

    def __enter__(self) -> psycopg.Connection:
        if not self.url.startswith(("postgres://", "postgresql://")):
            raise LegacySourceError(
                f"--from-url {url_mask_password(self.url)!r} is not a PostgreSQL URL "
                "(postgres://user:password@host:5432/database)"
            )
        try:
            conn = psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_SECONDS, row_factory=dict_row)
        except (psycopg.Error, ValueError) as exc:
            raise LegacySourceError(f"cannot connect to {_database_named(self.url)}: {error_first_line(exc)}") from None
        conn.read_only = True
        self.conn = conn
        return conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.conn is not None:
            self.conn.close()
        if isinstance(exc, psycopg.Error):
            raise LegacySourceError(f"reading {_database_named(self.url)} failed: {error_first_line(exc)}") from None


def _database_named(url: str) -> str:
    return f"the previous service's database {url_mask_password(url)}"


def _sources_detect(conn: psycopg.Connection) -> list[_Source]:
    """The previous service's tables in the database's current schema, with their columns."""
    found = []
    for spec in LEGACY_TABLES:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s",
            [spec.name],
        ).fetchall()
        columns = frozenset(row["column_name"] for row in rows)
        if "conversion_id" in columns:
            found.append(_Source(spec=spec, columns=columns))
    conn.rollback()
    return found


def _previous_partners(conn: psycopg.Connection) -> dict[str, str] | None:
    """The previous service's partners: its id (as text) and its code -> its code; None
    when it has no partners table."""
    exists = conn.execute("SELECT to_regclass('partners') IS NOT NULL AS found").fetchone()["found"]
    if not exists:
        conn.rollback()
        return None
    codes: dict[str, str] = {}
    for row in conn.execute("SELECT id, partner_code FROM partners").fetchall():
        codes[str(row["id"])] = row["partner_code"]
        codes.setdefault(row["partner_code"], row["partner_code"])
    conn.rollback()
    return codes


def _resolver(
    conn: psycopg.Connection,
    source: _Source,
    *,
    old_codes: dict[str, str] | None,
    target: Partner | None,
    source_partner: str | None,
) -> Callable[[Any], Partner | None]:
    """For a row's previous partner key, our partner (None: not matched)."""
    key_column = source.column(source.spec.partner_key)
    if target is not None:
        if key_column is not None and source_partner is None:
            keys = [
                row["key"]
                for row in conn.execute(
                    sql.SQL("SELECT DISTINCT {}::text AS key FROM {} LIMIT 11").format(
                        sql.Identifier(key_column), sql.Identifier(source.spec.name)
                    )
                ).fetchall()
            ]
            conn.rollback()
            if len(keys) > 1:
                shown = ", ".join(str(key) for key in keys[:10]) + (", ..." if len(keys) > 10 else "")
                raise LegacySourceError(
                    f"{source.spec.name} holds the rows of more than one previous partner ({key_column}: {shown}): "
                    f"choose whose go to {target.partner_code} with --source-partner"
                )
        return lambda _key: target
    if key_column is None or old_codes is None:
        raise LegacySourceError(
            f"{source.spec.name}: the previous service's rows do not say which partner they are for "
            f"({'no partners table' if key_column else 'no partner_id or tenant_id column'}): "
            "name the partner with --partner CODE"
        )
    ours = {partner.partner_code: partner for partner in Partner.objects.all()}
    cache: dict[Any, Partner | None] = {}

    def resolve(key: Any) -> Partner | None:
        if key not in cache:
            code = None if key is None else old_codes.get(str(key))
            cache[key] = ours.get(code) if code else None
        return cache[key]

    return resolve


def _rows(
    conn: psycopg.Connection, source: _Source, *, batch_size: int, source_partner: str | None
) -> Iterator[list[dict[str, Any]]]:
    """The table's rows in the order they were received, `batch_size` at a time, streamed
    from a server-side cursor (never all of them in memory)."""
    spec = source.spec
    selected = [sql.SQL("{} AS {}").format(sql.Identifier(col), sql.Identifier(col)) for col in _read_columns(source)]
    query = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(selected), sql.Identifier(spec.name))
    params: list[Any] = []
    key_column = source.column(spec.partner_key)
    if source_partner is not None:
        if key_column is None:
            raise LegacySourceError(f"{spec.name} has no partner_id or tenant_id column: --source-partner cannot apply")
        query += sql.SQL(" WHERE {}::text = %s").format(sql.Identifier(key_column))
        params.append(source_partner)
    order = [column for column in spec.order if column in source.columns]
    if order:
        query += sql.SQL(" ORDER BY {}").format(sql.SQL(", ").join(sql.Identifier(column) for column in order))
    with conn.cursor(name=f"import_legacy_{spec.name}") as cursor:
        cursor.itersize = batch_size
        cursor.execute(query, params)
        while batch := cursor.fetchmany(batch_size):
            yield batch
    conn.rollback()


def _read_columns(source: _Source) -> list[str]:
    spec = source.spec
    wanted = [*spec.order]
    for candidates in (*spec.fields.values(), spec.partner_key, spec.raw, spec.received, spec.headers, spec.ip):
        column = source.column(candidates)
        if column:
            wanted.append(column)
    for candidates in (spec.duplicate, spec.error):
        column = source.column(candidates)
        if column:
            wanted.append(column)
    return list(dict.fromkeys(column for column in wanted if column in source.columns))


class _Writer:
    """Maps a batch of the previous service's rows and writes each partner's share."""

    def __init__(self, *, report: ImportReport, dry_run: bool, announce: bool, say: Progress):
        self.report = report
        self.dry_run = dry_run
        self.announce = announce
        self.say = say
        self.imported_at = timezone.now()
        self.invalid_shown: Counter = Counter()
        self.columns: dict[str, dict[str, str]] = {}

    def write(self, source: _Source, batch: list[dict[str, Any]], resolve: Callable[[Any], Partner | None]) -> None:
        spec = source.spec
        key_column = source.column(spec.partner_key)
        duplicate_column = source.column(spec.duplicate)
        error_column = source.column(spec.error)
        shares: dict[int, tuple[Partner, list[_Row]]] = {}
        for record in batch:
            key = record.get(key_column) if key_column else None
            partner = resolve(key)
            if partner is None:
                self.report.unmatched[f"{key_column}={key}"] += 1
                continue
            tally = self.report.tally(partner.partner_code)
            tally.read += 1
            if duplicate_column and record.get(duplicate_column):
                tally.skipped[SKIP_DUPLICATE] += 1
                continue
            if error_column and record.get(error_column):
                tally.skipped[SKIP_REJECTED] += 1
                continue
            row = self._row(source, record, partner)
            if row is None:
                continue
            shares.setdefault(partner.pk, (partner, []))[1].append(row)
        for partner, rows in shares.values():
            self._partner_write(partner, rows)

    def _row(self, source: _Source, record: dict[str, Any], partner: Partner) -> _Row | None:
        """The row's values in our fields (None, counted and told, when one is invalid)."""
        spec = source.spec
        # The columns as a postback's parameters, so a refused value is named by its column.
        mapping = {name: column for name, column in self._columns(source).items()}
        params = {column: record[column] for column in mapping.values() if record.get(column) is not None}
        mapped = postback_map(mapping=mapping, params=params, tz=partner.tzinfo)
        raw = _raw_parameters(record.get(source.column(spec.raw) or ""))
        if mapped.errors:
            self._invalid(source, record, partner, mapped.errors)
            return None
        values = dict(mapped.values)
        # What the columns did not keep (a status, a currency, local amounts) read from the
        # raw parameters by the partner's own mapping; a value it would refuse is left out.
        if raw:
            from_raw = partner_postback_map(partner=partner, params=raw)
            for name, value in from_raw.values.items():
                if name not in values and (name in CANONICAL_FIELDS or name == "status_raw"):
                    values[name] = value
            if "status" not in values:
                values.pop("status_raw", None)
        received = _received_at(record, source) or self.imported_at
        headers = record.get(source.column(spec.headers) or "")
        ip = record.get(source.column(spec.ip) or "")
        try:
            ip = coerce_text(ip, 45) if ip is not None else None
        except ValueError:
            ip = None
        secret = partner.postback_secret
        # The previous service's networks sent their secret as ts_token / tlm_token: every
        # parameter named like a token is masked, whatever our partner's secret is now.
        tokens = SECRET_PARAMS | {str(name).lower() for name in raw if str(name).lower().endswith("token")}
        values.update(
            partner_id=partner.pk,
            raw_data=secret_masked(storable_json(raw), secret=secret, names=frozenset(tokens)),
            request_headers=secret_masked(storable_json(headers_for_storage(headers)), secret=secret)
            if isinstance(headers, dict)
            else {},
            request_ip=ip,
            received_at=received,
            is_processed=True,
            imported_at=self.imported_at,
            created_at=self.imported_at,
            updated_at=self.imported_at,
        )
        return _Row(values=values)

    def _columns(self, source: _Source) -> dict[str, str]:
        """Our field -> the source's column that fills it."""
        found = self.columns.get(source.spec.name)
        if found is None:
            found = {
                name: column
                for name, candidates in source.spec.fields.items()
                if (column := source.column(candidates)) is not None
            }
            self.columns[source.spec.name] = found
        return found

    def _invalid(self, source: _Source, record: dict[str, Any], partner: Partner, errors: dict[str, str]) -> None:
        tally = self.report.tally(partner.partner_code)
        tally.skipped[SKIP_INVALID] += 1
        shown = self.invalid_shown[partner.partner_code]
        self.invalid_shown[partner.partner_code] += 1
        if shown < INVALID_ROWS_SHOWN:
            where = f"id {record['id']}" if "id" in record else f"conversion_id {record.get('conversion_id')!r}"
            problems = "; ".join(errors.values())
            self.say(f"{partner.partner_code}: skipped {source.spec.name} {where}: {problems}")
        elif shown == INVALID_ROWS_SHOWN:
            self.say(f"{partner.partner_code}: more invalid rows skipped; the summary counts them")

    def _partner_write(self, partner: Partner, rows: list[_Row]) -> None:
        tally = self.report.tally(partner.partner_code)
        cutoff = timezone.now() - datetime.timedelta(days=partner.data_retention_days)
        with partner_database(partner) as alias:
            if self.dry_run:
                present = _originals_present(alias, partner.pk, [row.values["conversion_id"] for row in rows])
                fresh = [row for row in rows if row.values["conversion_id"] not in present]
                tally.present += len(rows) - len(fresh)
                tally.imported += len(fresh)
                written = fresh
            else:
                plain = rows
                if self.announce:
                    plain = []
                    for row in rows:
                        companions = decision_companions(
                            Announcement(
                                event="recorded",
                                source=IMPORT_SOURCE,
                                partner=partner,
                                conversion={name: row.values.get(name) for name in CANONICAL_FIELDS},
                            )
                        )
                        if not companions:
                            plain.append(row)
                            continue
                        conversion, _original = original_insert_with_companions(
                            alias=alias, values=row.values, companions=companions
                        )
                        if conversion is None:
                            tally.present += 1
                        else:
                            tally.imported += 1
                            tally.announced += 1
                inserted = _originals_insert(alias, [row.values for row in plain])
                tally.imported += inserted
                tally.present += len(plain) - inserted
                written = rows
        for row in written:
            received = row.values["received_at"]
            if received < cutoff:
                tally.beyond_retention += 1


def _raw_parameters(value: Any) -> dict[str, Any]:
    """The raw parameters the previous service kept, as a JSON object."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {"_raw": value}
    return value if isinstance(value, dict) else {"_raw": value}


def _received_at(record: dict[str, Any], source: _Source) -> datetime.datetime | None:
    for column in source.spec.received:
        value = record.get(column) if column in source.columns else None
        if isinstance(value, datetime.datetime):
            return value if timezone.is_aware(value) else timezone.make_aware(value, datetime.UTC)
    return None


def _originals_present(alias: str, partner_id: int, conversion_ids: list[str]) -> set[str]:
    """Which of these conversion_ids already have an original in the partner's storage."""
    present: set[str] = set()
    connection = connections[alias]
    step = _rows_per_statement(connection, 1)
    table = connection.ops.quote_name(PartnerConversion._meta.db_table)
    for start in range(0, len(conversion_ids), step):
        chunk = conversion_ids[start : start + step]
        placeholders = ", ".join(["%s"] * len(chunk))
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT conversion_id FROM {table} WHERE partner_id = %s "  # noqa: S608
                f"AND conversion_id IN ({placeholders}) AND {ORIGINAL_SQL}",
                [partner_id, *chunk],
            )
            present.update(found for (found,) in cursor.fetchall())
    return present


_PREPARED = (models.DateTimeField, models.DecimalField, models.JSONField)


def _originals_insert(alias: str, rows: list[dict[str, Any]]) -> int:
    """Insert `rows` as originals, each unless its conversion already has one (the
    partial unique index decides, as for a postback); the number inserted."""
    if not rows:
        return 0
    connection = connections[alias]
    fields = [f for f in PartnerConversion._meta.concrete_fields if not f.primary_key]
    prepared = [(f.attname, f if isinstance(f, _PREPARED) else None, _default(f)) for f in fields]

    def column_values(chunk: list[dict[str, Any]]) -> list[list[Any]]:
        columns = []
        for attname, preparing, default in prepared:
            values = [row[attname] if attname in row else default() for row in chunk]
            if preparing is not None:
                values = [None if v is None else preparing.get_db_prep_save(v, connection) for v in values]
            columns.append(values)
        return columns

    if connection.vendor == "postgresql":
        # One array per column: the statement stays small whatever the batch's size.
        statement = _unnest_insert_sql(connection, fields)
        inserted = 0
        for start in range(0, len(rows), ROWS_PER_STATEMENT):
            found = _server_bound(connection, statement, column_values(rows[start : start + ROWS_PER_STATEMENT]))
            inserted += len(found)
        return inserted
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in fields)
    placeholder = "(" + ", ".join(["%s"] * len(fields)) + ")"
    step = _rows_per_statement(connection, len(fields))
    inserted = 0
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        params = [value for row in zip(*column_values(chunk), strict=True) for value in row]
        statement = (
            f"INSERT INTO {quote(PartnerConversion._meta.db_table)} ({columns}) VALUES "  # noqa: S608
            f"{', '.join([placeholder] * len(chunk))} ON CONFLICT DO NOTHING RETURNING id"
        )
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            inserted += len(cursor.fetchall())
    return inserted


def _unnest_insert_sql(connection: Any, fields: list[models.Field]) -> str:
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in fields)
    # Typed without a length: a cast to varchar(50) would cut a longer value silently.
    arrays = ", ".join(f"%b::{f.db_type(connection).partition('(')[0]}[]" for f in fields)
    return (
        f"INSERT INTO {quote(PartnerConversion._meta.db_table)} ({columns}) "  # noqa: S608
        f"SELECT * FROM unnest({arrays}) ON CONFLICT DO NOTHING RETURNING id"
    )


def _server_bound(connection: Any, statement: str, params: list[Any]) -> list[tuple[Any, ...]]:
    """Run `statement` with its values sent apart from it, in binary (arrays of thousands
    of values bound into the text, or escaped as text, cost more than the insert)."""
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_no_broken_transaction()
    with connection.wrap_database_errors:
        cursor = binding_cursor(connection.connection)
        try:
            cursor.execute(statement, params)
            return cursor.fetchall()
        finally:
            cursor.close()


def _default(model_field: models.Field) -> Callable[[], Any]:
    if model_field.has_default():
        return model_field.get_default
    return lambda: None


def _rows_per_statement(connection: Any, columns: int) -> int:
    limit = connection.features.max_query_params
    if not limit:
        return ROWS_PER_STATEMENT
    return max(1, min(ROWS_PER_STATEMENT, (limit - 1) // columns))
