"""Reads of publisher configuration: which publishers a partner's conversions can match, cached."""

import datetime
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Min, Q
from django.utils import timezone

from conversions.models import ORIGINAL, PartnerConversion
from infra.databases import (
    ConfigurationUnavailable,
    PartnerDatabaseUnavailable,
    configuration_read,
    partner_database,
)
from infra.state import process_state_register
from partners.mapping import CANONICAL_FIELDS
from partners.models import Partner
from partners.selectors import partner_list_served
from publishers.models import PENDING, Delivery, Publisher
from publishers.payouts import payout_compute, payout_rule
from publishers.postback_urls import template_parts

logger = logging.getLogger(__name__)

# The conversions of each partner a publisher's URL preview and test send look at.
RECENT_CONVERSIONS = 100


@dataclass(frozen=True)
class PublisherRoute:
    """What the ingest needs of one active publisher: a snapshot, safe to share between threads."""

    id: int
    code: str
    match_field: str
    prefixes: tuple[str, ...]
    regex: re.Pattern | None
    events: frozenset[str]
    url_template: str
    template_parts: tuple[str, ...]
    template_macros: frozenset[str]
    method: str
    payout_default: tuple[str, Decimal]
    payout_overrides: dict[str, tuple[str, Decimal]]

    def matches(self, conversion: dict[str, Any]) -> bool:
        value = conversion.get(self.match_field)
        if not value:
            return False
        if self.regex is not None:
            return self.regex.match(value) is not None
        return value.startswith(self.prefixes)

    def payout(self, conversion: dict[str, Any]) -> Decimal | None:
        kind, value = payout_rule(
            default=self.payout_default,
            overrides=self.payout_overrides,
            offer_id=conversion.get("offer_id"),
            offer_name=conversion.get("offer_name"),
        )
        return payout_compute(
            kind=kind, value=value, sale_amount=conversion.get("usd_sale_amount"), earning=conversion.get("usd_earning")
        )


def publisher_route(publisher: Publisher) -> PublisherRoute:
    return PublisherRoute(
        id=publisher.pk,
        code=publisher.code,
        match_field=publisher.match_field,
        prefixes=tuple(publisher.prefixes),
        regex=re.compile(publisher.match_regex) if publisher.match_regex else None,
        events=frozenset(publisher.events or ()),
        url_template=publisher.url_template,
        template_parts=template_parts(publisher.url_template),
        template_macros=frozenset(template_parts(publisher.url_template)[1::2]),
        method=publisher.http_method,
        payout_default=(publisher.payout_kind, publisher.payout_value),
        payout_overrides={rule.offer: (rule.payout_kind, rule.payout_value) for rule in publisher.offer_payouts.all()},
    )


class PublisherDirectory:
    """Active publishers by the partner whose conversions they may match.

    Reloaded from `default` every PARTNER_CACHE_SECONDS, and at once after this process
    saved a publisher (`clear`). A lookup between reloads costs no query.
    """

    def __init__(self) -> None:
        self._by_partner: dict[int, tuple[PublisherRoute, ...]] = {}
        self._everywhere: tuple[PublisherRoute, ...] = ()
        self._loaded_at = float("-inf")
        self._loaded = False
        self._generation = 0  # moved by clear(): a reload begun before it is not trusted
        self._lock = threading.Lock()

    def for_partner(self, partner_id: int) -> tuple[PublisherRoute, ...]:
        if time.monotonic() - self._loaded_at >= settings.PARTNER_CACHE_SECONDS:
            self._reload()
        found = self._by_partner.get(partner_id)
        return self._everywhere if found is None else found

    def clear(self) -> None:
        """Reload on the next lookup (this process changed a publisher)."""
        self._generation += 1
        self._loaded_at = float("-inf")

    def _reload(self) -> None:
        with self._lock:
            if time.monotonic() - self._loaded_at < settings.PARTNER_CACHE_SECONDS:
                return  # another thread just reloaded
            started = time.monotonic()
            generation = self._generation
            try:
                with configuration_read():
                    publishers = list(
                        Publisher.objects.filter(is_active=True).prefetch_related("partners", "offer_payouts")
                    )
            except DatabaseError as exc:
                if not self._loaded:
                    # Not the partner database's fault, though it is asked inside its work.
                    raise ConfigurationUnavailable(exc) from exc
                logger.exception("cannot reload publishers; serving the cached copy")
                self._loaded_at = started
                return
            everywhere: list[PublisherRoute] = []
            by_partner: dict[int, list[PublisherRoute]] = {}
            for publisher in publishers:
                route = publisher_route(publisher)
                partner_ids = [partner.pk for partner in publisher.partners.all()]
                if not partner_ids:
                    everywhere.append(route)
                for partner_id in partner_ids:
                    by_partner.setdefault(partner_id, []).append(route)
            self._everywhere = tuple(everywhere)
            self._by_partner = {pid: (*routes, *everywhere) for pid, routes in by_partner.items()}
            self._loaded = True
            # A publisher saved while this was read may be missing from it: read again next time.
            self._loaded_at = started if generation == self._generation else float("-inf")


publisher_directory = PublisherDirectory()
process_state_register("publishers.publisher_directory", publisher_directory.clear)


def deliveries_queue_state(*, now: datetime.datetime | None = None) -> tuple[int, float]:
    """(deliveries pending, age in seconds of the oldest one due now) over the served partners;
    a partner database that cannot answer is left out."""
    now = now or timezone.now()
    depth, oldest = 0, 0.0
    for partner in partner_list_served():
        try:
            with partner_database(partner) as alias:
                pending = Delivery.objects.using(alias).filter(state=PENDING)
                depth += pending.count()
                first = pending.filter(next_attempt_at__lte=now).aggregate(first=Min("next_attempt_at"))["first"]
        except PartnerDatabaseUnavailable:
            continue
        if first is not None:
            oldest = max(oldest, (now - first).total_seconds())
    return depth, oldest


def deliveries_of_conversion(*, alias: str, conversion_id: int) -> list[Delivery]:
    return list(Delivery.objects.using(alias).filter(conversion_id=conversion_id).order_by("created_at", "id"))


def publisher_partners(publisher: Publisher) -> list[Partner]:
    """The active partners whose conversions the publisher may match (none chosen: every one)."""
    chosen = list(publisher.partners.filter(is_active=True))
    if chosen or publisher.partners.exists():
        return chosen
    return list(Partner.objects.filter(is_active=True).order_by("partner_code"))


def publisher_recent_conversion(*, publisher: Publisher) -> tuple[Partner, PartnerConversion, bool] | None:
    """The newest of the last RECENT_CONVERSIONS originals of its partners that the publisher
    matches (True), else the newest original at all (False); None when there is none. A
    partner database that cannot answer is left out."""
    route = publisher_route(publisher)
    newest = None
    for partner in publisher_partners(publisher):
        try:
            with partner_database(partner) as alias:
                recent = list(
                    PartnerConversion.objects.using(alias)
                    .filter(ORIGINAL)
                    .order_by("-received_at", "-id")[:RECENT_CONVERSIONS]
                )
        except PartnerDatabaseUnavailable:
            continue
        for conversion in recent:
            if route.matches({route.match_field: getattr(conversion, route.match_field)}):
                return partner, conversion, True
        if recent and (newest is None or recent[0].received_at > newest[1].received_at):
            newest = (partner, recent[0], False)
    return newest


def publisher_matching_conversions(
    *, route: PublisherRoute, partner: Partner, conversions
) -> Iterator[PartnerConversion]:
    """The originals of `conversions` that the publisher matches (prefixes narrowed in SQL,
    then the same test the ingest applies)."""
    queryset = conversions.filter(ORIGINAL, partner_id=partner.pk)
    if route.prefixes:
        prefixes = Q()
        for prefix in route.prefixes:
            prefixes |= Q(**{f"{route.match_field}__startswith": prefix})
        queryset = queryset.filter(prefixes)
    else:
        queryset = queryset.exclude(**{f"{route.match_field}__isnull": True})
    for conversion in queryset.only("id", "received_at", *CANONICAL_FIELDS).iterator(chunk_size=2000):
        if route.matches({route.match_field: getattr(conversion, route.match_field)}):
            yield conversion
