"""Reconciliation runs and the recovery they offer.

A run reads the report as a stream (sources.py) in batches: each batch of report rows
is mapped onto our fields (formats.py: the network's published format, or a CSV's
postback parameters), compared with our originals of the same conversion_ids (one query),
and written as the run's rows; then our originals of the run's days that the report
does not have are added, read through one cursor. Memory stays bounded by the batch,
whatever the size of the report or of the partner's table. A report that cannot be read
fails the run with its reason, and none of its rows are kept.

Recovery goes through the ingest's own decision: a missing conversion is recorded with
`postback_store(source="report")` (so a postback that arrived meanwhile makes it a
duplicate, never a second original), a report's status or amount is applied with
`conversion_settle(source="report")` (the lifecycle rules; the history says "report").
Each row remembers what was done with it, so doing it again changes nothing.
"""

import datetime
import io
import logging
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import IO, Any

from django.db import DatabaseError, DataError, connections, transaction
from django.db.models import Count, Exists, JSONField, OuterRef, Q
from django.utils import timezone
from psycopg.types.json import Jsonb

from conversions.ingest.decide import decide
from conversions.ingest.statements import original_get
from conversions.ingest.store import conversion_settle, postback_store
from conversions.models import ORIGINAL, PartnerConversion
from conversions.outcomes import Outcome
from infra.databases import binding_cursor, error_first_line, partner_database
from partners.models import Partner
from reconciliation.formats import (
    COMPARED_AMOUNTS,
    report_mapping,
    report_row_applicable,
    report_row_compare,
    report_row_map,
    source_report_rows,
)
from reconciliation.models import (
    APPLICABLE_KINDS,
    MISSING_HERE,
    MISSING_THERE,
    ROW_KINDS,
    ReconciliationRow,
    ReconciliationRun,
    ReportSource,
    ReportUpload,
)
from reconciliation.sources import ReportError, ReportRow

logger = logging.getLogger("conversions.reconciliation")

BATCH_SIZE = 1000
RANKS = {kind: rank for rank, (kind, _label) in enumerate(ROW_KINDS)}
# What a row compared with a report row reads of our original.
ORIGINAL_COMPARED = ("id", "conversion_id", "status", "currency", *COMPARED_AMOUNTS)
# Where a conversion recorded from a report says so (it had no request, so no headers).
REPORT_MARK_HEADER = "X-Recorded-From-Report"


# A row's action while a recovery works on it (inside that recovery's transaction only).
ROW_CLAIMED = "in progress"


class RunStopped(Exception):
    """The background worker is stopping: the run in progress is put back in the queue."""


class RecoveryRefused(ValueError):
    """Recovery asked of a run that did not finish (failed or still running)."""


def run_window(*, partner: Partner, date_from: datetime.date, date_to: datetime.date) -> tuple[datetime.datetime, ...]:
    """[start, end) of the days date_from..date_to (included) in the partner's time zone."""
    zone = partner.tzinfo
    start = datetime.datetime.combine(date_from, datetime.time.min, tzinfo=zone)
    end = datetime.datetime.combine(date_to + datetime.timedelta(days=1), datetime.time.min, tzinfo=zone)
    return start, end


def reconciliation_run(
    *,
    source: ReportSource,
    date_from: datetime.date,
    date_to: datetime.date,
    upload: IO[bytes] | None = None,
    trigger: str = ReconciliationRun.BY_COMMAND,
) -> ReconciliationRun:
    """Compare the source's report of date_from..date_to (the partner's days, by
    conversion time) with the partner's originals, in this thread; store and return the run.

    A report that cannot be read (a malformed CSV line, an API that refuses the
    credentials or keeps failing) leaves a failed run naming why, and no rows.
    Raises PartnerDatabaseUnavailable when the partner's database cannot be used.
    (The admin and the daily schedule queue runs for the background worker instead:
    reconciliation/runs.py.)
    """
    run_days_check(date_from=date_from, date_to=date_to)
    with partner_database(source.partner) as alias:
        run = run_create(
            alias=alias,
            source=source,
            date_from=date_from,
            date_to=date_to,
            state=ReconciliationRun.RUNNING,
            trigger=trigger,
            progress_at=timezone.now(),
        )
    return run_perform(source=source, run=run, upload=upload)


def run_create(
    *, alias: str, source: ReportSource, date_from: datetime.date, date_to: datetime.date, **fields: Any
) -> ReconciliationRun:
    """A new run of `source` over the days, in the partner's database (`fields`: its state, trigger, ...)."""
    return ReconciliationRun.objects.using(alias).create(
        partner_id=source.partner_id,
        source_id=source.pk,
        source_name=source.name[:100],
        date_from=date_from,
        date_to=date_to,
        **fields,
    )


def run_days_check(*, date_from: datetime.date, date_to: datetime.date) -> None:
    if date_to < date_from:
        raise ValueError(f"the range ends ({date_to}) before it starts ({date_from})")


def run_perform(
    *,
    source: ReportSource,
    run: ReconciliationRun,
    upload: IO[bytes] | None = None,
    stop: threading.Event | None = None,
) -> ReconciliationRun:
    """Read the report of a run that is `running` (claimed by this thread), compare it,
    and finish the run: done with its counts, or failed naming why. A CSV source's report
    is `upload`, or the file uploaded with the run (kept in the partner's database until
    the run ends). Raises PartnerDatabaseUnavailable when the partner's database cannot be
    used, and RunStopped (the run left `running` for the caller to queue again) when `stop`
    is set between two batches."""
    partner = source.partner
    mapping = report_mapping(partner=partner, source=source)
    with partner_database(partner) as alias:
        runs_interrupted_close(alias=alias, partner_id=partner.pk)
        # Rows of an earlier attempt (a worker that exited in the middle) go: a run starts afresh.
        ReconciliationRow.objects.using(alias).filter(run_id=run.pk).delete()
        run.mapping = mapping
        ReconciliationRun.objects.using(alias).filter(pk=run.pk).update(mapping=mapping)
        try:
            if upload is None and not source.is_api:
                upload = run_upload_reader(alias=alias, run=run)
            rows = source_report_rows(source=source, date_from=run.date_from, date_to=run.date_to, upload=upload)
            # An API's pages come about a second apart (its rate limit): a batch per page
            # shows the run's progress page by page.
            batch_size = min(BATCH_SIZE, max(1, source.page_size)) if source.is_api else BATCH_SIZE
            run.report_rows = _report_compare(
                partner=partner, alias=alias, run=run, rows=rows, stop=stop, batch_size=batch_size
            )
            _missing_there_add(partner=partner, alias=alias, run=run)
        except RunStopped:
            raise
        except (ReportError, DataError) as exc:
            # DataError: a value this database refuses (e.g. a NUL in an API record's text).
            error = str(exc) if isinstance(exc, ReportError) else f"the report has a value that cannot be stored: {exc}"
            ReconciliationRow.objects.using(alias).filter(run_id=run.pk).delete()
            run.state, run.error, run.report_rows = ReconciliationRun.FAILED, error.strip()[:1000], 0
            logger.error("reconcile partner=%s run=%s failed: %s", partner.partner_code, run.pk, exc)
        except BaseException as exc:
            # Anything else (the database gone mid-run, Ctrl-C, a bug): the run says it
            # did not finish rather than stay `running`; raised on as it was.
            _run_interrupted(alias=alias, run=run, reason=_error_named(exc))
            raise
        else:
            run.state = ReconciliationRun.DONE
            run.counts = run_counts(alias=alias, run=run)
        run.finished_at = timezone.now()
        # Only while it is still running (a run failed meanwhile as cut off stays failed),
        # and not the progress columns: the batches wrote them (pages read, rows compared).
        finished = (
            ReconciliationRun.objects.using(alias)
            .filter(pk=run.pk, state=ReconciliationRun.RUNNING)
            .update(
                state=run.state,
                error=run.error,
                report_rows=run.report_rows,
                counts=run.counts,
                finished_at=run.finished_at,
                mapping=run.mapping,
            )
        )
        ReportUpload.objects.using(alias).filter(run_id=run.pk).delete()
        if not finished:
            run.refresh_from_db(using=alias)
            logger.warning("reconcile run=%s ended after it was failed as cut off: its outcome is not kept", run.pk)
            return run
        run.refresh_from_db(using=alias, fields=["rows_read", "pages_read", "progress_at"])
    ReportSource.objects.filter(pk=source.pk).update(
        last_run_at=run.finished_at, last_run_counts=run.counts, last_run_error=run.error
    )
    return run


class _UploadPieces(io.RawIOBase):
    """The file uploaded with a run, read back piece by piece (one query per piece)."""

    def __init__(self, *, alias: str, run_id: int):
        self.alias, self.run_id = alias, run_id
        self.seq, self.buffer = 0, memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        if not self.buffer:
            piece = (
                ReportUpload.objects.using(self.alias)
                .filter(run_id=self.run_id, seq=self.seq)
                .values_list("data", flat=True)
                .first()
            )
            if piece is None:
                return 0
            self.seq += 1
            self.buffer = memoryview(bytes(piece))
        size = min(len(target), len(self.buffer))
        target[:size] = self.buffer[:size]
        self.buffer = self.buffer[size:]
        return size


def run_upload_reader(*, alias: str, run: ReconciliationRun) -> IO[bytes]:
    """A file object over the report uploaded with `run` (a ReportError when there is none)."""
    if not ReportUpload.objects.using(alias).filter(run_id=run.pk).exists():
        raise ReportError("the uploaded report is gone (the run was started again after it finished?)")
    return io.BufferedReader(_UploadPieces(alias=alias, run_id=run.pk), buffer_size=ReportUpload.CHUNK_BYTES)


# A running run that stored no batch for this long was cut off (its process stopped).
RUN_STALE_AFTER = datetime.timedelta(minutes=15)
INTERRUPTED = "interrupted: {reason}; start a new run"


def runs_interrupted_close(*, alias: str, partner_id: int, now: datetime.datetime | None = None) -> int:
    """Fail the partner's runs still `running` with no sign of life for RUN_STALE_AFTER
    (a crash or a kill cut them off), without their partial rows; how many."""
    now = now or timezone.now()
    stale = now - RUN_STALE_AFTER
    cut_off = list(
        ReconciliationRun.objects.using(alias)
        .filter(partner_id=partner_id, state=ReconciliationRun.RUNNING)
        .filter(Q(progress_at__lt=stale) | Q(progress_at__isnull=True, started_at__lt=stale))
        .values_list("pk", "progress_at", "started_at")
    )
    for pk, progress_at, started_at in cut_off:
        since = (progress_at or started_at).isoformat(timespec="seconds")
        _run_interrupted(
            alias=alias,
            run=ReconciliationRun(pk=pk),
            reason=f"nothing stored since {since}, its process stopped",
            now=now,
        )
        logger.warning("reconcile run=%s was cut off (no progress since %s): failed", pk, since)
    return len(cut_off)


def _run_interrupted(*, alias: str, run: ReconciliationRun, reason: str, now: datetime.datetime | None = None) -> None:
    """Best effort: the run failed, naming why, without its rows (when the database answers)."""
    try:
        ReconciliationRow.objects.using(alias).filter(run_id=run.pk).delete()
        ReportUpload.objects.using(alias).filter(run_id=run.pk).delete()  # it will not be read again
        ReconciliationRun.objects.using(alias).filter(pk=run.pk, state=ReconciliationRun.RUNNING).update(
            state=ReconciliationRun.FAILED,
            error=INTERRUPTED.format(reason=reason)[:1000],
            report_rows=0,
            finished_at=now or timezone.now(),
        )
    except DatabaseError:
        logger.exception("reconcile run=%s: cannot mark it failed (the next run will)", run.pk)


def _error_named(exc: BaseException) -> str:
    """`RuntimeError: what it says` (its first line), or the class name alone."""
    name = exc.__class__.__name__
    return f"{name}: {error_first_line(exc)}" if str(exc).strip() else name


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _report_compare(
    *,
    partner: Partner,
    alias: str,
    run: ReconciliationRun,
    rows: Iterable[ReportRow],
    stop: threading.Event | None = None,
    batch_size: int | None = None,
) -> int:
    """Compare and store the report's rows, a batch at a time; how many rows it had."""
    count = 0
    for batch in _batched(rows, batch_size or BATCH_SIZE):
        if stop is not None and stop.is_set():
            raise RunStopped
        mapped = []
        for report_row in batch:
            result = report_row_map(partner=partner, mapping=run.mapping, values=report_row.values)
            if not result.is_valid:
                problems = "; ".join(f"{name}: {message}" for name, message in result.errors.items())
                raise ReportError(f"{report_row.place} {report_row.line}: {problems}")
            mapped.append((report_row, result.values))
        ids = [values["conversion_id"] for _row, values in mapped]
        originals = {
            found["conversion_id"]: found
            for found in PartnerConversion.objects.using(alias)
            .filter(ORIGINAL, partner_id=partner.pk, conversion_id__in=ids)
            .values(*ORIGINAL_COMPARED)
        }
        stored = []
        for report_row, values in mapped:
            original = originals.get(values["conversion_id"])
            kind, differences = report_row_compare(ours=original, theirs=values)
            stored.append(
                {
                    "run_id": run.pk,
                    "conversion_id": values["conversion_id"],
                    "kind": kind,
                    "rank": RANKS[kind],
                    "differences": differences,
                    "conversion_pk": original["id"] if original else None,
                    "conversion_datetime": values.get("conversion_datetime"),
                    "status": values.get("status"),
                    "usd_sale_amount": values.get("usd_sale_amount"),
                    "usd_earning": values.get("usd_earning"),
                    "currency": values.get("currency"),
                    "report_line": report_row.line,
                    "report_data": report_row.values,
                }
            )
        rows_insert(alias=alias, rows=stored)
        count += len(batch)
        pages = max((row.page for row, _values in mapped), default=0)
        ReconciliationRun.objects.using(alias).filter(pk=run.pk).update(
            progress_at=timezone.now(), rows_read=count, pages_read=pages
        )
    return count


def _missing_there_add(*, partner: Partner, alias: str, run: ReconciliationRun) -> None:
    """Add our originals of the run's days that the report does not have."""
    start, end = run_window(partner=partner, date_from=run.date_from, date_to=run.date_to)
    reported = ReconciliationRow.objects.filter(run_id=run.pk, conversion_id=OuterRef("conversion_id"))
    ours = (
        PartnerConversion.objects.using(alias)
        .filter(ORIGINAL, partner_id=partner.pk, conversion_datetime__gte=start, conversion_datetime__lt=end)
        .filter(~Exists(reported))
        .order_by()
        .values_list(
            "id", "conversion_id", "conversion_datetime", "status", "usd_sale_amount", "usd_earning", "currency"
        )
    )
    # One cursor read in chunks (server-side on PostgreSQL), its rows written as they come.
    with transaction.atomic(using=alias):
        for batch in _batched(ours.iterator(chunk_size=BATCH_SIZE), BATCH_SIZE):
            rows_insert(
                alias=alias,
                rows=[
                    {
                        "run_id": run.pk,
                        "conversion_id": conversion_id,
                        "kind": MISSING_THERE,
                        "rank": RANKS[MISSING_THERE],
                        "conversion_pk": pk,
                        "conversion_datetime": moment,
                        "status": status,
                        "usd_sale_amount": sale,
                        "usd_earning": earning,
                        "currency": currency,
                    }
                    for pk, conversion_id, moment, status, sale, earning, currency in batch
                ],
            )


_ROW_FIELDS = [field for field in ReconciliationRow._meta.concrete_fields if not field.primary_key]
_ROW_DEFAULTS = [(field, field.get_default) for field in _ROW_FIELDS]


def rows_insert(*, alias: str, rows: list[dict[str, Any]]) -> None:
    """Write a batch of a run's rows (attname -> value; the rest take their defaults); a
    conversion_id already in the run keeps its first row (a report that lists one twice)."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        objects = [ReconciliationRow(**row) for row in rows]
        ReconciliationRow.objects.using(alias).bulk_create(objects, ignore_conflicts=True)
        return
    # On PostgreSQL bulk_create sends UNNEST arrays quoted on the client, which cost most of
    # a run's time; one statement sent with its values apart (pipelined) costs a fraction.
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in _ROW_FIELDS)
    placeholders = ", ".join(["%s"] * len(_ROW_FIELDS))
    table = quote(ReconciliationRow._meta.db_table)
    sql = f"INSERT INTO {table} ({columns}) VALUES ({placeholders}) ON CONFLICT DO NOTHING"  # noqa: S608
    values = [
        [
            _db_value(field, row[field.attname] if field.attname in row else default())
            for field, default in _ROW_DEFAULTS
        ]
        for row in rows
    ]
    with transaction.atomic(using=alias):
        connection.ensure_connection()
        with connection.wrap_database_errors, binding_cursor(connection.connection) as cursor:
            cursor.executemany(sql, values)


def _db_value(field: Any, value: Any) -> Any:
    if isinstance(field, JSONField):
        return Jsonb(value)
    return value


def run_counts(*, alias: str, run: ReconciliationRun) -> dict[str, int]:
    """The run's rows by kind (every kind, zeros included)."""
    counts = {kind: 0 for kind, _label in ROW_KINDS}
    rows = ReconciliationRow.objects.using(alias).filter(run_id=run.pk).order_by()
    counts.update({kind: n for kind, n in rows.values_list("kind").annotate(n=Count("id"))})
    return counts


# --- recovery ------------------------------------------------------------------------


def _recoverable(run: ReconciliationRun) -> None:
    if run.state != ReconciliationRun.DONE:
        raise RecoveryRefused(f"run #{run.pk} is {run.state}: only a finished run can be recovered from")


def _pending_rows(*, alias: str, run: ReconciliationRun, kinds: Iterable[str]) -> Iterator[ReconciliationRow]:
    """The run's rows of `kinds` that recovery has not handled yet, in keyset batches."""
    last = 0
    while True:
        batch = list(
            ReconciliationRow.objects.using(alias)
            .filter(run_id=run.pk, kind__in=list(kinds), action="", id__gt=last)
            .order_by("id")[:BATCH_SIZE]
        )
        if not batch:
            return
        yield from batch
        last = batch[-1].id


def _row_claim(*, alias: str, row: ReconciliationRow) -> bool:
    """Inside the caller's transaction: take a pending row for this recovery, or False when
    another one took it (on PostgreSQL the row lock makes the second wait, then see it taken)."""
    return bool(ReconciliationRow.objects.using(alias).filter(pk=row.pk, action="").update(action=ROW_CLAIMED))


def _action_word(outcome: Outcome) -> str:
    return "recorded" if outcome is Outcome.SUCCESS else outcome.name.lower()


def run_missing_record(*, partner: Partner, run: ReconciliationRun) -> dict[str, int]:
    """Record the conversions the report has and we never received, each as a postback
    would be: what it became (recorded, or duplicate when a postback arrived meanwhile)
    -> how many. Rows already handled are left alone, so a second call does nothing."""
    _recoverable(run)
    outcomes: Counter[str] = Counter()
    with partner_database(partner) as alias:
        for row in _pending_rows(alias=alias, run=run, kinds=[MISSING_HERE]):
            mapped = report_row_map(partner=partner, mapping=run.mapping, values=row.report_data)
            kept = {
                "partner_id": partner.pk,
                "raw_data": row.report_data,
                "request_headers": {REPORT_MARK_HEADER: f"reconciliation run {run.pk}"},
                "request_ip": None,
            }
            # The row is claimed (a concurrent recovery of the run skips it), the conversion
            # stored and the row's note of it written together, or none of them.
            with transaction.atomic(using=alias):
                if not _row_claim(alias=alias, row=row):
                    continue
                stored = postback_store(
                    partner=partner, alias=alias, row=kept, mapped=mapped, digest=None, source="report"
                )
                row.action = _action_word(stored.outcome)
                row.conversion_pk = stored.conversion.duplicate_of_id or stored.conversion.pk
                row.action_at = timezone.now()
                row.save(using=alias, update_fields=["action", "conversion_pk", "action_at"])
            outcomes[row.action] += 1
        recorded = ReconciliationRow.objects.using(alias).filter(run_id=run.pk, action="recorded").count()
        ReconciliationRun.objects.using(alias).filter(pk=run.pk).update(recorded=recorded)
        run.recorded = recorded
    if outcomes:
        logger.info("reconcile partner=%s run=%s recorded: %s", partner.partner_code, run.pk, dict(outcomes))
    return dict(outcomes)


def run_report_apply(*, partner: Partner, run: ReconciliationRun) -> dict[str, int]:
    """Apply the report's statuses and amounts where they differ from ours, through the
    lifecycle rules (a permitted change is applied and announced, one that would roll the
    conversion back is kept in its history as stale), the history marked as from the
    report: what each became -> how many. Already handled rows are left alone."""
    _recoverable(run)
    outcomes: Counter[str] = Counter()
    with partner_database(partner) as alias:
        for row in _pending_rows(alias=alias, run=run, kinds=APPLICABLE_KINDS):
            with transaction.atomic(using=alias):
                if not _row_claim(alias=alias, row=row):
                    continue  # a concurrent recovery of the run has it
                row.action = _report_row_apply(partner=partner, alias=alias, run=run, row=row)
                row.action_at = timezone.now()
                row.save(using=alias, update_fields=["action", "action_at"])
            outcomes[row.action] += 1
        applied = ReconciliationRow.objects.using(alias).filter(run_id=run.pk, action="updated").count()
        ReconciliationRun.objects.using(alias).filter(pk=run.pk).update(applied=applied)
        run.applied = applied
    if outcomes:
        logger.info("reconcile partner=%s run=%s applied: %s", partner.partner_code, run.pk, dict(outcomes))
    return dict(outcomes)


def _report_row_apply(*, partner: Partner, alias: str, run: ReconciliationRun, row: ReconciliationRow) -> str:
    mapped = report_row_map(partner=partner, mapping=run.mapping, values=row.report_data)
    if not mapped.is_valid:
        return "unreadable"  # the partner's statuses or time zone changed since the run
    original = original_get(alias=alias, partner_id=partner.pk, conversion_id=row.conversion_id)
    if original is None:
        return "gone"  # purged since the run
    # Only what the report can say about ours: never its currency, nor money it cannot compare.
    ours = {name: getattr(original, name) for name in ORIGINAL_COMPARED}
    applicable = report_row_applicable(ours=ours, theirs=mapped.values)
    incoming = {**applicable, "partner_id": partner.pk, "raw_data": row.report_data, "request_ip": None}
    decision = decide(incoming=incoming, original=original, transitions=partner.status_transitions)
    if decision.outcome is Outcome.DUPLICATE:
        currency = mapped.values.get("currency")
        if currency is not None and currency != original.currency:
            return "currency kept"  # the only difference is one a report does not apply
        return "agrees"  # a postback brought the same values meanwhile: nothing to apply
    with transaction.atomic(using=alias):
        stored = conversion_settle(
            partner=partner, alias=alias, incoming=incoming, digest=None, source="report", original=original
        )
    return _action_word(stored.outcome) if stored is not None else "gone"
