"""Refusals: postbacks turned away before anything is stored, and their audit.

A Refusal is raised by the parse and guard stages and answered by the pipeline; its
`reason` decides the HTTP status (REASONS) and is what the audit counts per partner,
partner-local day and reason in the partner's own database.
"""

import atexit
import contextlib
import datetime
import logging
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.utils import timezone

from conversions.ingest.counters import daily_counter_increment
from conversions.models import DailyCounter
from conversions.outcomes import Outcome
from infra.databases import PartnerDatabaseUnavailable, partner_database
from infra.state import process_state_register
from partners.models import Partner

logger = logging.getLogger("conversions.security")

REJECTED_PREFIX = "rejected:"

# reason -> HTTP status; the reason is what the audit counts and the response names.
REASONS = {
    "body_too_large": 413,
    "no_parameters": 400,
    "too_many_parameters": 400,
    "parameter_name_too_long": 400,
    "parameter_value_too_long": 400,
    "invalid_data": 400,
    "ip_not_allowed": 403,
    "token_missing": 403,
    "token_invalid": 403,
    "signature_expired": 403,
    "quota_exceeded": 429,
}


@dataclass(frozen=True)
class Refusal:
    """A postback refused before (or instead of) being stored as a conversion."""

    reason: str
    message: str
    errors: dict[str, str] = field(default_factory=dict)
    retry_after: int | None = None

    @property
    def http_status(self) -> int:
        return REASONS[self.reason]

    @property
    def outcome(self) -> Outcome:
        return Outcome.for_status(self.http_status)


class Refused(Exception):
    """Raised by the parse and guard stages with the Refusal the pipeline answers."""

    def __init__(self, refusal: Refusal):
        super().__init__(refusal.message)
        self.refusal = refusal


@dataclass(frozen=True)
class RefusalCount:
    day: datetime.date
    reason: str
    http_status: int
    count: int
    last_at: datetime.datetime


def refusal_record(*, partner: Partner, reason: str, now: datetime.datetime | None = None) -> None:
    """Count one refused postback for the partner's local day. Never raises, and costs
    the postback no write: the count is added to the partner database's counter within
    REFUSAL_FLUSH_SECONDS (refusal_ledger), so a flood of bad postbacks neither pays a
    second statement each nor queues on one counter row."""
    now = now or timezone.now()
    try:
        refusal_ledger.add(partner=partner, day=partner.local_now(now).date(), reason=reason, now=now)
    except Exception:  # e.g. no thread could be started: the audit must not turn a 4xx into a 500
        logger.exception("cannot count refused postback partner=%s reason=%s", partner.partner_code, reason)


@dataclass
class _Pending:
    partner: Partner
    count: int
    last_at: datetime.datetime


class RefusalLedger:
    """This process's refused postbacks not yet added to their partners' counters.

    Added by a thread of this process every REFUSAL_FLUSH_SECONDS while some are pending
    (0: at once, by the refusing request), before this process reads a partner's counts
    (refusal_counts), and when the process exits; counts that could not be written (a
    partner database away) stay pending for the next try, every second or so. Each
    partner's counts are written under that partner's own lock: a slow database delays
    only its own. Only a process killed outright loses the counts of its last
    REFUSAL_FLUSH_SECONDS (the rejected postbacks themselves are stored rows).
    """

    def __init__(self) -> None:
        self._pending: dict[tuple[int, datetime.date, str], _Pending] = {}
        self._lock = threading.Lock()
        self._partner_locks: dict[int, threading.Lock] = {}  # one flush of a partner at a time
        self._flusher: threading.Thread | None = None
        self._exit_registered = False

    def add(self, *, partner: Partner, day: datetime.date, reason: str, now: datetime.datetime) -> None:
        key = (partner.pk, day, reason)
        with self._lock:
            pending = self._pending.get(key)
            if pending is None:
                self._pending[key] = _Pending(partner=partner, count=1, last_at=now)
            else:
                pending.partner, pending.count, pending.last_at = partner, pending.count + 1, max(pending.last_at, now)
            if not self._exit_registered:
                atexit.register(self.flush)
                self._exit_registered = True
            if settings.REFUSAL_FLUSH_SECONDS > 0:
                self._flusher_ensure()
                return
        self.flush(partner_id=partner.pk)
        with self._lock:
            if self._pending:  # it could not be written: retried by the thread
                self._flusher_ensure()

    def flush(self, *, partner_id: int | None = None) -> None:
        """Add the pending counts (of one partner, or all) to the partners' databases."""
        with self._lock:
            partner_ids = {key[0] for key in self._pending} if partner_id is None else {partner_id}
            locks = [self._partner_locks.setdefault(pk, threading.Lock()) for pk in sorted(partner_ids)]
        for pk, lock in zip(sorted(partner_ids), locks, strict=True):
            with lock:
                with self._lock:
                    taken = {key: self._pending.pop(key) for key in [key for key in self._pending if key[0] == pk]}
                for key, pending in taken.items():
                    self._write(key, pending)

    def _write(self, key: tuple[int, datetime.date, str], pending: _Pending) -> None:
        try:
            with partner_database(pending.partner) as alias:
                daily_counter_increment(
                    alias=alias,
                    partner_id=key[0],
                    day=key[1],
                    name=REJECTED_PREFIX + key[2],
                    now=pending.last_at,
                    by=pending.count,
                )
        except Exception as exc:  # kept for the next try, whatever went wrong
            with self._lock:
                kept = self._pending.setdefault(key, _Pending(pending.partner, 0, pending.last_at))
                kept.count += pending.count
                kept.last_at = max(kept.last_at, pending.last_at)
            message = "cannot count %d refused postback(s) partner=%s reason=%s yet: %s"
            arguments = (pending.count, pending.partner.partner_code, key[2], exc)
            if isinstance(exc, PartnerDatabaseUnavailable):
                logger.error(message, *arguments)
            else:
                logger.exception(message, *arguments)

    def clear(self) -> None:
        """Forget the pending counts; returns once no flush is under way (tests)."""
        with self._lock:
            locks = [lock for _pk, lock in sorted(self._partner_locks.items())]
        with contextlib.ExitStack() as held:
            for lock in locks:  # in flush()'s order: no flush is under way while held
                held.enter_context(lock)
            with self._lock:
                self._pending = {}

    def _flusher_ensure(self) -> None:
        """(Under self._lock.) The thread that adds the pending counts, started when needed."""
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher = threading.Thread(target=self._flush_while_pending, name="refusal-counts", daemon=True)
            self._flusher.start()

    def _flush_while_pending(self) -> None:
        started = time.monotonic()
        while True:
            # Short naps, so a pending count waits REFUSAL_FLUSH_SECONDS as it is now (one
            # second between tries of counts that could not be written at once).
            interval = settings.REFUSAL_FLUSH_SECONDS or 1.0
            time.sleep(min(interval, 0.25))
            if time.monotonic() - started < interval:
                continue
            self.flush()
            started = time.monotonic()
            with self._lock:
                if not self._pending:
                    self._flusher = None
                    return


refusal_ledger = RefusalLedger()
process_state_register("conversions.refusal_ledger", refusal_ledger.clear)


def refusal_counts(*, partner: Partner, days: int = 30) -> list[RefusalCount]:
    """Refused postbacks of the last `days` local days, newest day first, this process's
    pending ones included (raises PartnerDatabaseUnavailable when the partner's database
    cannot be read)."""
    refusal_ledger.flush(partner_id=partner.pk)
    since = partner.local_now().date() - datetime.timedelta(days=days - 1)
    with partner_database(partner) as alias:
        rows = list(
            DailyCounter.objects.using(alias)
            .filter(partner_id=partner.pk, day__gte=since, name__startswith=REJECTED_PREFIX)
            .order_by("-day", "name")
        )
    return [
        RefusalCount(
            day=row.day,
            reason=(reason := row.name.removeprefix(REJECTED_PREFIX)),
            http_status=REASONS.get(reason, 0),
            count=row.count,
            last_at=row.last_at,
        )
        for row in rows
    ]
