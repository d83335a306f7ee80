"""The delivery worker (`manage.py deliver_postbacks`): claim due deliveries, send them, record.

It is the platform's one background process: beside deliveries it hosts the jobs apps
register (infra/jobs.py), e.g. reconciliation's queued and daily runs.

`delivery_worker_run` runs one worker in this process until a signal (or, with `once`,
until nothing is due); `DeliveryWorker` claims each partner database's due deliveries
with a lease, sends them concurrently and records every attempt, retrying with backoff
and pausing a publisher after PUBLISHER_PAUSE_AFTER_FAILURES failures in a row.
"""

import datetime
import logging
import os
import signal
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F, Q
from django.utils import timezone

from infra.databases import PartnerDatabaseUnavailable, partner_database
from infra.jobs import BackgroundJobs
from partners.models import Partner
from partners.selectors import partner_list_served
from publishers import metrics
from publishers.deliveries import delivery_send
from publishers.models import DELIVERED, FAILED, PENDING, Delivery, DeliveryAttempt, Publisher
from publishers.outbound import OutboundClient, OutboundResult, outbound_client
from publishers.services import publisher_pause

logger = logging.getLogger("publishers.delivery")

Clock = Callable[[], datetime.datetime]


@dataclass
class PassResult:
    claimed: int = 0
    delivered: int = 0
    failed: int = 0
    retried: int = 0
    held: int = 0  # claimed, then not sent: their publisher was paused meanwhile
    by_partner: dict[str, int] = field(default_factory=dict)


class PublisherGate:
    """Whether one more postback may be sent to a publisher now, in this worker.

    A publisher whose last answer here was a success takes up to the worker's concurrency;
    any other (not heard from yet, or failing) takes only as many sends in flight as it has
    failures left before PUBLISHER_PAUSE_AFTER_FAILURES, so a dead publisher gets exactly
    that many attempts; once it reaches the limit it is paused and nothing more starts.
    Used by the worker's dispatching thread only (one per worker).
    """

    def __init__(self, publisher: Publisher, *, limit: int):
        self.publisher = publisher
        self.limit = limit
        self.failures = publisher.consecutive_failures
        self.answering = False
        self.in_flight = 0
        # At the limit already (e.g. the limit was lowered): nothing is claimed for it.
        self.paused = self.failures >= limit

    def may_send(self, *, concurrency: int) -> bool:
        if self.paused:
            return False
        if self.answering and self.failures == 0:
            return self.in_flight < concurrency
        return self.failures + self.in_flight < self.limit

    def started(self) -> None:
        self.in_flight += 1

    def finished(self, *, succeeded: bool, now: datetime.datetime) -> None:
        self.in_flight -= 1
        try:
            failures, paused = publisher_attempt_account(publisher=self.publisher, succeeded=succeeded, now=now)
        except DatabaseError as exc:
            # The sends already made must still be recorded (else they would go out again when
            # their lease ends): count here, and let the next answer try the shared count again.
            logger.error("publisher=%s: cannot count a delivery's answer: %s", self.publisher.code, exc)
            failures, paused = (0 if succeeded else self.failures + 1), False
        self.answering = succeeded
        self.failures = failures
        self.paused = self.paused or paused or failures >= self.limit


def system_clock() -> datetime.datetime:
    return timezone.now()


class DeliveryWorker:
    """Claims due deliveries with a lease, sends them concurrently, records each attempt.

    PostgreSQL: `FOR UPDATE SKIP LOCKED` lets any number of workers claim side by side;
    SQLite: the claim's IMMEDIATE transaction lets one worker claim at a time. A claimed
    delivery is leased for DELIVERY_LEASE_SECONDS (longer than a batch's sends, see
    publishers.checks): a worker that dies mid-batch leaves its deliveries to be claimed
    again when their lease expires, with the same idempotency key.
    """

    def __init__(
        self,
        *,
        clock: Clock = system_clock,
        client: OutboundClient | None = None,
        concurrency: int | None = None,
        batch_size: int | None = None,
        lease_seconds: float | None = None,
    ):
        self.clock = clock
        self.concurrency = concurrency or settings.DELIVERY_CONCURRENCY
        self.batch_size = batch_size or settings.DELIVERY_BATCH_SIZE
        self.lease = datetime.timedelta(seconds=lease_seconds or settings.DELIVERY_LEASE_SECONDS)
        self.client = client or outbound_client(pool_size=self.concurrency)
        self.owner = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="deliver")
        self.stopping = threading.Event()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()

    def run_once(self) -> PassResult:
        """Send everything due now, partner by partner, until nothing is due (or stopping)."""
        total = PassResult()
        while not self.stopping.is_set():
            result = self.run_pass()
            total.claimed += result.claimed
            total.delivered += result.delivered
            total.failed += result.failed
            total.retried += result.retried
            total.held += result.held
            for code, count in result.by_partner.items():
                total.by_partner[code] = total.by_partner.get(code, 0) + count
            if result.claimed == 0:
                break
        return total

    def run_forever(self) -> None:
        while not self.stopping.is_set():
            try:
                result = self.run_pass()
            except Exception:  # a pass that failed must not stop the worker; the next one retries
                logger.exception("delivery pass failed")
                result = PassResult()
            if result.claimed == 0:
                self.stopping.wait(settings.DELIVERY_POLL_SECONDS)

    def run_pass(self) -> PassResult:
        """One batch per partner database with due deliveries."""
        result = PassResult()
        limit = settings.PUBLISHER_PAUSE_AFTER_FAILURES
        gates = {
            p.pk: PublisherGate(p, limit=limit)
            for p in Publisher.objects.filter(is_active=True, paused_at__isnull=True)
        }
        for gate in gates.values():
            if gate.paused and publisher_pause(
                publisher=gate.publisher, reason=f"{gate.failures} consecutive failed deliveries", now=self.clock()
            ):
                logger.error(
                    "publisher=%s paused after %s consecutive failed deliveries; resume it in the admin",
                    gate.publisher.code,
                    gate.failures,
                )
        for partner in partner_list_served():
            if self.stopping.is_set() or not any(not gate.paused for gate in gates.values()):
                break
            try:
                self._partner_batch(partner, gates, result)
            except PartnerDatabaseUnavailable as exc:
                logger.warning("deliveries of partner=%s not sent: %s", partner.partner_code, exc.reason)
        return result

    def _partner_batch(self, partner: Partner, gates: dict[int, PublisherGate], result: PassResult) -> None:
        now = self.clock()
        with partner_database(partner) as alias:
            claimed = deliveries_claim(
                alias=alias,
                now=now,
                lease_until=now + self.lease,
                owner=self.owner,
                limit=self.batch_size,
                publisher_ids=[pk for pk, gate in gates.items() if not gate.paused],
            )
        if not claimed:
            return
        result.claimed += len(claimed)
        result.by_partner[partner.partner_code] = len(claimed)
        outcomes, held = self._send_all(claimed, gates)
        with partner_database(partner) as alias:
            states = deliveries_record(alias=alias, outcomes=outcomes, now=self.clock(), owner=self.owner)
            deliveries_release(alias=alias, deliveries=held, owner=self.owner)
        result.held += len(held)
        for (delivery, (_started_at, outcome)), state in zip(outcomes, states, strict=True):
            publisher = gates[delivery.publisher_id].publisher
            metrics.delivery_count(publisher=publisher.code, outcome=state if outcome.succeeded else "error")
            if state == DELIVERED:
                result.delivered += 1
            else:
                result.failed += state == FAILED
                result.retried += state == PENDING

    def _send_all(
        self, claimed: list[Delivery], gates: dict[int, PublisherGate]
    ) -> tuple[list[tuple[Delivery, tuple[datetime.datetime, OutboundResult]]], list[Delivery]]:
        """Send the claimed deliveries, `concurrency` at a time, each only while its publisher's
        gate allows it (each answer is counted as it arrives); (the outcomes, the deliveries held)."""
        waiting: dict[int, deque[Delivery]] = {}
        for delivery in claimed:
            waiting.setdefault(delivery.publisher_id, deque()).append(delivery)
        running: dict[Future, Delivery] = {}
        outcomes: list[tuple[Delivery, tuple[datetime.datetime, OutboundResult]]] = []
        held: list[Delivery] = []
        while True:
            for publisher_id, queue in list(waiting.items()):
                gate = gates[publisher_id]
                while queue and len(running) < self.concurrency and gate.may_send(concurrency=self.concurrency):
                    delivery = queue.popleft()
                    gate.started()
                    running[self.pool.submit(self._send, delivery, gate.publisher)] = delivery
                if gate.paused and not gate.in_flight:
                    held += queue
                    queue.clear()
                if not queue:
                    del waiting[publisher_id]
            if not running:
                break  # what still waits cannot be sent in this batch
            done, _pending = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                delivery = running.pop(future)
                started_at, outcome = future.result()
                gates[delivery.publisher_id].finished(succeeded=outcome.succeeded, now=self.clock())
                outcomes.append((delivery, (started_at, outcome)))
        return outcomes, held + [delivery for queue in waiting.values() for delivery in queue]

    def _send(self, delivery: Delivery, publisher: Publisher) -> tuple[datetime.datetime, OutboundResult]:
        started_at = self.clock()
        return started_at, delivery_send(client=self.client, delivery=delivery, secret=publisher.signing_secret)


def delivery_worker_run(
    *, once: bool, concurrency: int | None = None, batch_size: int | None = None
) -> PassResult | None:
    """Run a delivery worker in this process: with `once`, send what is due and return the
    totals; otherwise until SIGTERM or SIGINT (the batch in flight finishes and is recorded)."""
    worker = DeliveryWorker(concurrency=concurrency, batch_size=batch_size)

    def stop(signum: int, _frame: Any) -> None:
        # The batch in flight finishes (bounded by the send timeouts) and is recorded.
        logger.info("delivery worker %s stopping (signal %s)", worker.owner, signum)
        worker.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # The platform's other background work (reconciliation runs and schedules, ...) in
    # threads of this same process, stopped with it.
    jobs = BackgroundJobs(stopping=worker.stopping)
    try:
        if once:
            result = worker.run_once()
            jobs.run_once()
            return result
        logger.info(
            "delivery worker %s started: concurrency %s, batch %s", worker.owner, worker.concurrency, worker.batch_size
        )
        jobs.start()
        worker.run_forever()
        return None
    finally:
        jobs.stop(timeout=settings.WORKER_STOP_SECONDS)
        worker.close()


def deliveries_claim(
    *,
    alias: str,
    now: datetime.datetime,
    lease_until: datetime.datetime,
    owner: str,
    limit: int,
    publisher_ids: list[int],
) -> list[Delivery]:
    """Lease up to `limit` due deliveries of these publishers to `owner`: none that another
    worker holds (row locks skipped, leases unexpired)."""
    with transaction.atomic(using=alias):
        due = list(
            Delivery.objects.using(alias)
            .select_for_update(skip_locked=True)
            .filter(state=PENDING, next_attempt_at__lte=now, publisher_id__in=publisher_ids)
            .filter(Q(leased_until__isnull=True) | Q(leased_until__lt=now))
            .order_by("next_attempt_at", "id")[:limit]
        )
        if due:
            Delivery.objects.using(alias).filter(pk__in=[d.pk for d in due]).update(
                leased_until=lease_until, lease_owner=owner
            )
    return due


def delivery_next_attempt(*, attempts: int, now: datetime.datetime) -> datetime.datetime | None:
    """When to try again after `attempts` failed tries; None when the delivery has failed."""
    backoff = settings.DELIVERY_BACKOFF_SECONDS
    if attempts > len(backoff):
        return None
    return now + datetime.timedelta(seconds=backoff[attempts - 1])


def deliveries_record(
    *,
    alias: str,
    outcomes: list[tuple[Delivery, tuple[datetime.datetime, OutboundResult]]],
    now: datetime.datetime,
    owner: str,
) -> list[str]:
    """Record a batch's attempts and each delivery's new state (delivered, pending again,
    failed), in one transaction; the states, in order.

    A state changes only while `owner` still holds the delivery's lease: a worker whose
    lease expired (another one claimed it meanwhile) only adds its attempt to the log.
    Successes are written with one UPDATE per status code, failures one by one.
    """
    states: list[str] = []
    attempts: list[DeliveryAttempt] = []
    delivered: dict[int, list[int]] = {}
    failed: list[tuple[int, dict]] = []
    for delivery, (started_at, outcome) in outcomes:
        number = delivery.attempts + 1
        attempts.append(
            DeliveryAttempt(
                delivery_id=delivery.pk,
                number=number,
                worker=owner,
                started_at=started_at,
                duration_ms=outcome.duration_ms,
                status_code=outcome.status_code,
                error=outcome.error,
                response_excerpt=outcome.excerpt,
            )
        )
        if outcome.succeeded:
            delivered.setdefault(outcome.status_code, []).append(delivery.pk)
            states.append(DELIVERED)
            continue
        retry_at = delivery_next_attempt(attempts=number, now=now)
        values = {"state": FAILED} if retry_at is None else {"state": PENDING, "next_attempt_at": retry_at}
        values["last_error"] = outcome.error or f"HTTP {outcome.status_code}"
        values["last_status_code"] = outcome.status_code
        failed.append((delivery.pk, values))
        states.append(values["state"])
    leased = Delivery.objects.using(alias).filter(lease_owner=owner)
    released = {"attempts": F("attempts") + 1, "leased_until": None, "lease_owner": ""}
    with transaction.atomic(using=alias):
        DeliveryAttempt.objects.using(alias).bulk_create(attempts)
        for status_code, ids in delivered.items():
            leased.filter(pk__in=ids).update(
                state=DELIVERED, delivered_at=now, last_status_code=status_code, last_error="", **released
            )
        for pk, values in failed:
            leased.filter(pk=pk).update(**values, **released)
    return states


def deliveries_release(*, alias: str, deliveries: list[Delivery], owner: str) -> None:
    """Give back deliveries claimed and not sent (their publisher was paused): claimable at
    once when it is resumed, their attempts unchanged."""
    if deliveries:
        Delivery.objects.using(alias).filter(pk__in=[d.pk for d in deliveries], lease_owner=owner).update(
            leased_until=None, lease_owner=""
        )


def publisher_attempt_account(*, publisher: Publisher, succeeded: bool, now: datetime.datetime) -> tuple[int, bool]:
    """Count a publisher's consecutive failures (every worker's); pause it (an ERROR line) at
    PUBLISHER_PAUSE_AFTER_FAILURES. (The failures in a row now, whether it is paused now.)"""
    if succeeded:
        if publisher.consecutive_failures:
            Publisher.objects.filter(pk=publisher.pk).update(consecutive_failures=0)
            publisher.consecutive_failures = 0
        return 0, False
    Publisher.objects.filter(pk=publisher.pk).update(consecutive_failures=F("consecutive_failures") + 1)
    failures = Publisher.objects.values_list("consecutive_failures", flat=True).get(pk=publisher.pk)
    publisher.consecutive_failures = failures
    limit = settings.PUBLISHER_PAUSE_AFTER_FAILURES
    if failures < limit:
        return failures, False
    reason = f"{failures} consecutive failed deliveries"
    if publisher_pause(publisher=publisher, reason=reason, now=now):
        logger.error(
            "publisher=%s paused after %s consecutive failed deliveries; resume it in the admin",
            publisher.code,
            failures,
        )
    return failures, True
