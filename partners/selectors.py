"""Reads of partner configuration, cached per process for the postback hot path."""

import logging
import threading
import time

from django.conf import settings
from django.db import DatabaseError

from partners.databases import partner_database_register
from partners.models import Partner, endpoint_key

logger = logging.getLogger(__name__)


class PartnerDirectory:
    """Active partners by endpoint, reloaded from `default` at most every few seconds.

    A hit costs no query; a miss (unknown endpoint, or a partner added since the last
    load) reloads once, so a new partner works in every worker without a restart and
    each postback does at most one query on `default`.
    """

    def __init__(self) -> None:
        self._by_endpoint: dict[str, Partner] = {}
        self._by_code: dict[str, Partner] = {}
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def by_endpoint(self, endpoint_path: str) -> Partner | None:
        key = endpoint_key(endpoint_path)
        reloaded = self._reload_if_stale()
        partner = self._by_endpoint.get(key)
        if partner is None and not reloaded:
            self._reload()
            partner = self._by_endpoint.get(key)
        return partner

    def active(self) -> list[Partner]:
        self._reload_if_stale()
        return list(self._by_code.values())

    def clear(self) -> None:
        self._loaded_at = float("-inf")

    def _reload_if_stale(self) -> bool:
        if time.monotonic() - self._loaded_at < settings.PARTNER_CACHE_SECONDS:
            return False
        self._reload()
        return True

    def _reload(self) -> None:
        with self._lock:
            try:
                partners = partner_list_served()
            except DatabaseError:
                if not self._by_code:
                    raise
                # Keep serving the last known configuration while `default` is away.
                logger.exception("cannot reload partner configuration; serving the cached copy")
                return
            for partner in partners:
                partner_database_register(partner)
            self._by_endpoint = {endpoint_key(p.endpoint_path): p for p in partners}
            self._by_code = {p.partner_code: p for p in partners}
            self._loaded_at = time.monotonic()


partner_directory = PartnerDirectory()


def partner_list_served() -> list[Partner]:
    """Active partners this instance serves (POSTBACK_PARTNERS, or all)."""
    queryset = Partner.objects.filter(is_active=True).order_by("partner_code")
    if settings.POSTBACK_PARTNERS:
        queryset = queryset.filter(partner_code__in=settings.POSTBACK_PARTNERS)
    return list(queryset)


def partner_get_by_endpoint(endpoint_path: str) -> Partner | None:
    """The active partner served at `endpoint_path` (with or without slashes), or None."""
    return partner_directory.by_endpoint(endpoint_path)
