"""Runs off the request: queued by the admin or a daily schedule, performed by the background worker.

The admin's "Reconcile…" queues a run (`run_queue`: the run `queued` in the partner's
database, an uploaded CSV stored with it in pieces) and marks its source
(`ReportSource.queued_at`, in `default`), so the worker finds queued work with one query
whatever the number of partners. The worker's job `runs_tick` claims one queued run
(`queued` -> `running` by a compare-and-set: of several workers one wins), performs it
(services.run_perform) with its progress on the run's page, and, for a run that asks it,
records the missing conversions (automatic recovery, each exactly once: the run has one
performer, and recording goes through the ingest's dedupe).

`schedules_tick` queues each source's daily run once its time has come in the partner's
time zone: `ReportSource.scheduled_through` moves to today by a compare-and-set, so of
several workers exactly one queues it.
"""

import datetime
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import IO

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from infra.databases import PartnerDatabaseUnavailable, partner_database
from reconciliation.models import (
    API_KINDS,
    MISSING_HERE,
    ReconciliationRow,
    ReconciliationRun,
    ReportSource,
    ReportUpload,
)
from reconciliation.services import RunStopped, run_create, run_days_check, run_missing_record, run_perform

logger = logging.getLogger("conversions.reconciliation")

Clock = Callable[[], datetime.datetime]
WORKER_NAME = f"{socket.gethostname()[:40]}:{os.getpid()}"


def run_queue(
    *,
    source: ReportSource,
    date_from: datetime.date,
    date_to: datetime.date,
    trigger: str = ReconciliationRun.BY_ADMIN,
    requested_by: str = "",
    record_missing: bool = False,
    upload: IO[bytes] | None = None,
    upload_name: str = "",
    now: datetime.datetime | None = None,
) -> ReconciliationRun:
    """Queue a run of the source for the background worker; a CSV source's file is read
    here (in pieces, never whole in memory) and kept with the run until it ends.
    Raises ValueError for days in the wrong order or a CSV source without a file, and
    PartnerDatabaseUnavailable when the partner's database cannot be used."""
    run_days_check(date_from=date_from, date_to=date_to)
    if not source.is_api and upload is None:
        raise ValueError("a CSV source needs an uploaded file")
    now = now or timezone.now()
    with partner_database(source.partner) as alias, transaction.atomic(using=alias):
        run = run_create(
            alias=alias,
            source=source,
            date_from=date_from,
            date_to=date_to,
            state=ReconciliationRun.QUEUED,
            trigger=trigger,
            requested_by=requested_by[:150],
            record_missing=record_missing,
            upload_name=upload_name[:255],
            started_at=now,
        )
        if upload is not None:
            run.upload_bytes = _upload_store(alias=alias, run=run, upload=upload)
            run.save(using=alias, update_fields=["upload_bytes"])
    ReportSource.objects.filter(pk=source.pk).update(queued_at=now)
    logger.info("reconcile partner=%s run=%s queued by %s", source.partner.partner_code, run.pk, trigger)
    return run


def _upload_store(*, alias: str, run: ReconciliationRun, upload: IO[bytes]) -> int:
    size, seq = 0, 0
    while piece := upload.read(ReportUpload.CHUNK_BYTES):
        ReportUpload.objects.using(alias).create(run=run, seq=seq, data=piece)
        size += len(piece)
        seq += 1
    return size


# The runs this process is performing: put back in the queue if it exits in the middle.
_performing: dict[int, tuple[ReportSource, ReconciliationRun]] = {}


def runs_abandon() -> None:
    """The worker is exiting with runs in progress (a page of the API still awaited): queue them again."""
    for source, run in list(_performing.values()):
        with partner_database(source.partner) as alias:
            run_requeue(alias=alias, run=run, source=source)
        logger.warning("reconcile run=%s queued again: the worker stopped in the middle of it", run.pk)


def _recording_pending(*, alias: str, source: ReportSource) -> list[ReconciliationRun]:
    """The source's done runs that were to record their missing conversions and have some left."""
    pending = ReconciliationRow.objects.using(alias).filter(run_id=OuterRef("pk"), kind=MISSING_HERE, action="")
    return list(
        ReconciliationRun.objects.using(alias)
        .filter(source_id=source.pk, state=ReconciliationRun.DONE, record_missing=True)
        .filter(Exists(pending))
        .order_by("pk")[:10]
    )


def run_claim(*, alias: str, run_id: int, worker: str, now: datetime.datetime | None = None) -> bool:
    """Take a queued run for `worker`: True for the one caller that moved it to running."""
    now = now or timezone.now()
    return bool(
        ReconciliationRun.objects.using(alias)
        .filter(pk=run_id, state=ReconciliationRun.QUEUED)
        .update(state=ReconciliationRun.RUNNING, worker=worker[:100], started_at=now, progress_at=now)
    )


def run_requeue(*, alias: str, run: ReconciliationRun, source: ReportSource) -> None:
    """Put a run cut off by the worker's stop back in the queue (its rows go; it starts again)."""
    with transaction.atomic(using=alias):
        ReconciliationRow.objects.using(alias).filter(run_id=run.pk).delete()
        ReconciliationRun.objects.using(alias).filter(pk=run.pk, state=ReconciliationRun.RUNNING).update(
            state=ReconciliationRun.QUEUED, worker="", rows_read=0, pages_read=0, report_rows=0
        )
    ReportSource.objects.filter(pk=source.pk).update(queued_at=timezone.now())


def runs_tick(stopping: threading.Event, *, worker: str | None = None) -> bool:
    """Claim and perform one queued run (of any partner); True if one was performed."""
    worker = worker or f"{WORKER_NAME}:{threading.current_thread().name}"
    marked = list(
        ReportSource.objects.select_related("partner")
        .filter(queued_at__isnull=False)
        .order_by("queued_at", "pk")
        .values_list("pk", "queued_at")[:50]
    )
    for source_id, marked_at in marked:
        if stopping.is_set():
            return False
        source = ReportSource.objects.select_related("partner").filter(pk=source_id).first()
        if source is None:
            continue
        try:
            performed = _source_queue_take(source=source, worker=worker, marked_at=marked_at, stopping=stopping)
        except PartnerDatabaseUnavailable as exc:
            logger.warning("reconcile partner=%s: queued runs wait: %s", source.partner.partner_code, exc.reason)
            continue
        if performed:
            return True
    return False


def _source_queue_take(*, source: ReportSource, worker: str, marked_at, stopping: threading.Event) -> bool:
    """Claim the source's oldest queued run and perform it; unmark the source when none is left."""
    with partner_database(source.partner) as alias:
        queued = list(
            ReconciliationRun.objects.using(alias)
            .filter(source_id=source.pk, state=ReconciliationRun.QUEUED)
            .order_by("started_at", "pk")
            .values_list("pk", flat=True)[:10]
        )
        claimed = next((pk for pk in queued if run_claim(alias=alias, run_id=pk, worker=worker)), None)
        if claimed is None:
            unrecorded = _recording_pending(alias=alias, source=source)
            if unrecorded:
                # A done run whose automatic recording did not finish (a database blip, the
                # worker stopped right after the run): recorded now; rows are claimed one by
                # one, so another worker doing the same records each conversion once.
                for run in unrecorded:
                    outcomes = run_missing_record(partner=source.partner, run=run)
                    logger.info("reconcile run=%s recorded automatically (resumed): %s", run.pk, outcomes)
                return True
            # Nothing left to do: unmark, unless a run was queued since the mark was read.
            ReportSource.objects.filter(pk=source.pk, queued_at=marked_at).update(queued_at=None)
            return False
        run = ReconciliationRun.objects.using(alias).get(pk=claimed)
    logger.info("reconcile partner=%s run=%s: performing (%s)", source.partner.partner_code, run.pk, worker)
    _performing[run.pk] = (source, run)
    try:
        run = run_perform(source=source, run=run, stop=stopping)
    except RunStopped:
        with partner_database(source.partner) as alias:
            run_requeue(alias=alias, run=run, source=source)
        logger.info("reconcile run=%s queued again: the worker is stopping", run.pk)
        return False
    finally:
        _performing.pop(run.pk, None)
    if run.record_missing and run.state == ReconciliationRun.DONE:
        outcomes = run_missing_record(partner=source.partner, run=run)
        logger.info(
            "reconcile partner=%s run=%s recorded automatically: %s", source.partner.partner_code, run.pk, outcomes
        )
    return True


def source_runs_close(*, source: ReportSource) -> int:
    """The source is being deleted: its queued runs fail (nobody will perform them); how many.
    Best effort: a partner database that does not answer keeps them queued, shown as such."""
    try:
        with partner_database(source.partner) as alias:
            return (
                ReconciliationRun.objects.using(alias)
                .filter(source_id=source.pk, state=ReconciliationRun.QUEUED)
                .update(
                    state=ReconciliationRun.FAILED, error="its report source was deleted", finished_at=timezone.now()
                )
            )
    except (PartnerDatabaseUnavailable, DatabaseError) as exc:
        logger.warning("reconcile source=%s deleted with queued runs left: %s", source.pk, exc)
        return 0


# --- the daily schedule ---------------------------------------------------------------


def schedules_tick(stopping: threading.Event, *, clock: Clock = timezone.now) -> bool:
    """Queue every daily run whose time has come (the partner's time zone); never twice a day."""
    now = clock()
    sources = ReportSource.objects.select_related("partner").filter(
        schedule_daily=True, is_active=True, kind__in=API_KINDS, partner__is_active=True
    )
    for source in sources:
        if stopping.is_set():
            break
        local = source.partner.local_now(now)
        today = local.date()
        if local.time() < source.schedule_at:
            continue
        if source.scheduled_through is not None and source.scheduled_through >= today:
            continue
        won = (
            ReportSource.objects.filter(pk=source.pk)
            .filter(Q(scheduled_through__isnull=True) | Q(scheduled_through__lt=today))
            .update(scheduled_through=today)
        )
        if not won:
            continue  # another worker queued it
        try:
            run_queue(
                source=source,
                date_from=today - datetime.timedelta(days=source.schedule_days - 1),
                date_to=today,
                trigger=ReconciliationRun.BY_SCHEDULE,
                record_missing=source.auto_record_missing,
                now=now,
            )
        except PartnerDatabaseUnavailable as exc:
            # Not queued: give the day back so the next tick tries again.
            ReportSource.objects.filter(pk=source.pk, scheduled_through=today).update(
                scheduled_through=source.scheduled_through
            )
            logger.warning("reconcile partner=%s: daily run not queued: %s", source.partner.partner_code, exc.reason)
    return False


def jobs_register() -> None:
    """The background worker's reconciliation jobs (infra/jobs.py)."""
    from infra.jobs import background_job_register

    background_job_register(
        "reconciliation.runs",
        every=settings.RECONCILE_POLL_SECONDS,
        tick=runs_tick,
        threads=max(1, settings.RECONCILE_WORKER_THREADS),
        abandon=runs_abandon,
    )
    background_job_register("reconciliation.schedules", every=settings.RECONCILE_POLL_SECONDS, tick=schedules_tick)
