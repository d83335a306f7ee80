"""Writes of the forwarding: pausing and resuming publishers, resend, backfill, the test send.

The delivery worker (claim, send, record) is publishers/worker.py.
"""

import datetime
from collections.abc import Iterable
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from conversions.models import PartnerConversion
from infra.databases import partner_database
from partners.models import Partner
from publishers.deliveries import delivery_send, delivery_values
from publishers.models import PENDING, RECORDED, Delivery, Publisher
from publishers.outbound import OutboundClient, OutboundResult, outbound_client
from publishers.selectors import (
    PublisherRoute,
    publisher_directory,
    publisher_matching_conversions,
    publisher_partners,
    publisher_recent_conversion,
    publisher_route,
)

# Idempotency keys looked up per query when a backfill counts what it wrote.
BACKFILL_COUNT_CHUNK = 1000


def publisher_save(*, publisher: Publisher) -> None:
    """After a publisher (or its partners, its payout overrides) changed: every lookup sees it."""
    publisher_directory.clear()


def publisher_pause(*, publisher: Publisher, reason: str, now: datetime.datetime | None = None) -> bool:
    """Pause a publisher (its deliveries wait); False when it already was."""
    paused = Publisher.objects.filter(pk=publisher.pk, paused_at__isnull=True).update(
        paused_at=now or timezone.now(), paused_reason=reason
    )
    publisher.refresh_from_db()
    return bool(paused)


def publisher_resume(*, publisher: Publisher) -> None:
    """Resume a paused publisher: its waiting deliveries are sent by the next pass."""
    Publisher.objects.filter(pk=publisher.pk).update(paused_at=None, paused_reason="", consecutive_failures=0)
    publisher.refresh_from_db()


def deliveries_resend(*, partner: Partner, delivery_ids: Iterable[int], now: datetime.datetime | None = None) -> int:
    """Send these deliveries again at once (with the same idempotency key); how many."""
    with partner_database(partner) as alias:
        return (
            Delivery.objects.using(alias)
            .filter(pk__in=list(delivery_ids))
            .update(state=PENDING, next_attempt_at=now or timezone.now(), leased_until=None, lease_owner="")
        )


def backfill_event(*, route: PublisherRoute, conversion: PartnerConversion) -> str | None:
    """What a backfill sends for a conversion: `recorded` when the publisher takes it, else
    the conversion's current status when the publisher takes that; else nothing."""
    if RECORDED in route.events:
        return RECORDED
    if conversion.status and conversion.status in route.events:
        return conversion.status
    return None


def publisher_backfill(*, publisher: Publisher, days: int, now: datetime.datetime | None = None) -> int:
    """Write a delivery, for an event the publisher takes, for each matching conversion of the
    last `days` days that the publisher never had one for; how many were written (those a
    backfill running at the same time wrote first are not counted). Running it again writes none."""
    since = (now or timezone.now()) - datetime.timedelta(days=days)
    route = publisher_route(publisher)
    written = 0
    for partner in publisher_partners(publisher):
        with partner_database(partner) as alias:
            delivered = Delivery.objects.using(alias).filter(publisher_id=publisher.pk).values("conversion_id")
            recent = PartnerConversion.objects.using(alias).filter(received_at__gte=since).exclude(pk__in=delivered)
            rows = []
            for conversion in publisher_matching_conversions(route=route, partner=partner, conversions=recent):
                event = backfill_event(route=route, conversion=conversion)
                if event is None:
                    continue
                values = delivery_values(
                    route=route,
                    conversion=conversion.canonical_values(),
                    partner=partner,
                    event=event,
                    source="backfill",
                )
                rows.append(Delivery(conversion_id=conversion.pk, **values))
            with transaction.atomic(using=alias):
                Delivery.objects.using(alias).bulk_create(rows, batch_size=500, ignore_conflicts=True)
                # A row dropped as a conflict is not ours: count the keys that were written.
                # (Narrowed to this publisher's backfill of these conversions: the indexes on
                # publisher and conversion find them, idempotency_key alone has none.)
                keys = [row.idempotency_key for row in rows]
                for start in range(0, len(keys), BACKFILL_COUNT_CHUNK):
                    chunk = rows[start : start + BACKFILL_COUNT_CHUNK]
                    written += (
                        Delivery.objects.using(alias)
                        .filter(
                            publisher_id=publisher.pk,
                            source="backfill",
                            conversion_id__in=[row.conversion_id for row in chunk],
                            idempotency_key__in=keys[start : start + BACKFILL_COUNT_CHUNK],
                        )
                        .count()
                    )
    return written


@dataclass(frozen=True)
class PublisherTestSend:
    """A test postback sent to a publisher: the request (method, URL) and the publisher's answer."""

    method: str
    url: str
    answer: OutboundResult


def publisher_test_send(*, publisher: Publisher, client: OutboundClient | None = None) -> PublisherTestSend | None:
    """Send the publisher, now, the postback of its newest matching conversion (among the last
    RECENT_CONVERSIONS of each of its partners) as event "test", signed as a delivery is;
    nothing is stored. None when none of them matches. `client`: the factory's by default."""
    found = publisher_recent_conversion(publisher=publisher)
    if found is None or not found[2]:
        return None
    partner, conversion, _matched = found
    delivery = Delivery(
        **delivery_values(
            route=publisher_route(publisher),
            conversion=conversion.canonical_values(),
            partner=partner,
            event="test",
            source="test",
        )
    )
    sender = client or outbound_client()
    try:
        answer = delivery_send(client=sender, delivery=delivery, secret=publisher.signing_secret)
    finally:
        if client is None:
            sender.close()
    return PublisherTestSend(method=delivery.method, url=delivery.url, answer=answer)
