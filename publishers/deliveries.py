"""Deliveries owed to publishers: what the ingest's hook writes with a conversion change.

`deliveries_announced` is the listener registered at the ingest's hook point
(conversions.ingest.hooks): for a conversion recorded or changed it returns one
Delivery row per matching publisher configured for that event, written in the same
transaction as the conversion. It does no I/O (the publishers come from a cached
directory) and renders the URL there, so the delivery says what the conversion was
at that moment, whatever changes later. `delivery_send` sends one delivery, signed as our
inbound postbacks are (the worker's sends and the admin's test send).
"""

import datetime
import json
import time
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from django.utils import timezone

from conversions.ingest.access import SIGNATURE_HEADER, TIMESTAMP_HEADER, postback_signature
from conversions.ingest.hooks import Announcement, Companion
from publishers.models import AMOUNT, RECORDED, Delivery
from publishers.outbound import OutboundClient, OutboundResult
from publishers.postback_urls import template_render
from publishers.selectors import PublisherRoute, publisher_directory

AMOUNT_FIELDS = frozenset({"usd_sale_amount", "usd_earning", "sale_amount_local", "payout_local"})
IDEMPOTENCY_HEADER = "Idempotency-Key"


def announcement_event(announcement: Announcement) -> str | None:
    """The publisher event an announcement is: recorded, the new status, or an amount corrected."""
    if announcement.event == "recorded":
        return RECORDED
    if "status" in announcement.changes and announcement.conversion.get("status"):
        return announcement.conversion["status"]
    if AMOUNT_FIELDS & set(announcement.changes):
        return AMOUNT
    return None


def deliveries_announced(announcement: Announcement) -> list[Companion]:
    """The deliveries to write with an announced conversion change (the hook's listener)."""
    routes = publisher_directory.for_partner(announcement.partner.pk)
    if not routes:
        return []
    event = announcement_event(announcement)
    if event is None:
        return []
    conversion = announcement.conversion
    return [
        Companion(
            model=Delivery,
            values=delivery_values(
                route=route,
                conversion=conversion,
                partner=announcement.partner,
                event=event,
                source=announcement.source,
            ),
        )
        for route in routes
        if event in route.events and route.matches(conversion)
    ]


def macro_values(
    *,
    route: PublisherRoute,
    conversion: dict[str, Any],
    partner_code: str,
    event: str,
    key: str,
    payout: Decimal | None,
    names: Iterable[str] | None = None,
) -> dict[str, str]:
    """The macros' values for one delivery (amounts as plain decimals, times in ISO 8601
    UTC): `names` only, or all of them."""
    values = {
        "conversion_id": conversion.get("conversion_id"),
        "click_id": conversion.get("click_id"),
        "sub_id": conversion.get("sub_id"),
        "media_id": conversion.get("media_id"),
        "offer_id": conversion.get("offer_id"),
        "offer_name": conversion.get("offer_name"),
        "status": conversion.get("status"),
        "event": event,
        "payout": payout,
        "sale_amount": conversion.get("usd_sale_amount"),
        "earning": conversion.get("usd_earning"),
        "currency": conversion.get("currency"),
        "sale_amount_local": conversion.get("sale_amount_local"),
        "conversion_datetime": conversion.get("conversion_datetime"),
        "partner_code": partner_code,
        "publisher_code": route.code,
        "idempotency_key": key,
    }
    return {name: _text(values[name]) for name in (values if names is None else names)}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).isoformat() if timezone.is_aware(value) else value.isoformat()
    if isinstance(value, Decimal):
        return f"{value:f}"
    return str(value)


def delivery_values(
    *, route: PublisherRoute, conversion: dict[str, Any], partner: Any, event: str, source: str
) -> dict[str, Any]:
    """A Delivery's column values (without its conversion) for one publisher and event."""
    key = uuid.uuid4().hex
    payout = route.payout(conversion)
    # On the ingest's path: a GET renders only the macros its template uses.
    macros = macro_values(
        route=route,
        conversion=conversion,
        partner_code=partner.partner_code,
        event=event,
        key=key,
        payout=payout,
        names=None if route.method == "POST" else route.template_macros,
    )
    now = timezone.now()
    return {
        "partner_id": partner.pk,
        "publisher_id": route.id,
        "event": event,
        "source": source,
        "idempotency_key": key,
        "method": route.method,
        "url": template_render(route.url_template, macros, parts=route.template_parts),
        "body": json.dumps(macros, sort_keys=True) if route.method == "POST" else "",
        "payout": payout,
        "created_at": now,
        "next_attempt_at": now,
    }


def delivery_headers(*, delivery: Delivery, secret: str, now: float) -> dict[str, str]:
    """The idempotency key, and with a secret the signature, as our inbound postbacks are signed."""
    headers = {IDEMPOTENCY_HEADER: delivery.idempotency_key}
    if delivery.method == "POST":
        headers["Content-Type"] = "application/json"
    if secret:
        timestamp = str(int(now))
        query = delivery.url.partition("?")[2].encode()
        body = delivery.body.encode() if delivery.method == "POST" else b""
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = postback_signature(
            secret=secret, query_string=query, body=body, timestamp=timestamp
        )
    return headers


def delivery_send(*, client: OutboundClient, delivery: Delivery, secret: str) -> OutboundResult:
    """Send one delivery now, signed with `secret` when there is one; the publisher's faults
    are the result's error, never raised."""
    body = delivery.body.encode() if delivery.method == "POST" else None
    headers = delivery_headers(delivery=delivery, secret=secret, now=time.time())
    return client.send(method=delivery.method, url=delivery.url, headers=headers, body=body)
