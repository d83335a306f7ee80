"""Reads of partner configuration: cached per process for the postback hot path, and
which partners a user may see (partner scopes)."""

import logging
import threading
import time

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Q, QuerySet

from infra.databases import configuration_read
from infra.state import process_state_register
from partners.models import Partner, PartnerScope, endpoint_key

logger = logging.getLogger(__name__)


class PartnerDirectory:
    """Active partners by endpoint (and extra path), reloaded from `default` every PARTNER_CACHE_SECONDS.

    A hit costs no query. A miss (an unknown endpoint, or a partner added since the
    last load) reloads at once, but at most once per PARTNER_NOT_FOUND_SECONDS per
    process whatever the endpoint: a new partner works in every worker within that
    time, and a flood of requests to unknown endpoints costs `default` at most one
    query per process per PARTNER_NOT_FOUND_SECONDS.
    """

    def __init__(self) -> None:
        self._by_endpoint: dict[str, Partner] = {}
        self._by_extra_path: dict[str, Partner] = {}
        self._by_code: dict[str, Partner] = {}
        self._loaded_at = float("-inf")
        self._miss_reloaded_at = float("-inf")
        self._invalid = False  # this process changed a partner: the cached copy must not be served
        self._lock = threading.Lock()

    def by_endpoint(self, endpoint_path: str) -> Partner | None:
        """The partner served at /partner/<endpoint_path>."""
        return self._find("_by_endpoint", endpoint_key(endpoint_path))

    def by_extra_path(self, path: str) -> Partner | None:
        """The partner that also accepts its postbacks at /<path> (Partner.extra_paths)."""
        return self._find("_by_extra_path", endpoint_key(path))

    def _find(self, table: str, key: str) -> Partner | None:
        reloaded = self._reload_if_stale()
        partner = getattr(self, table).get(key)
        if partner is None and not reloaded:
            now = time.monotonic()
            if now - self._miss_reloaded_at >= settings.PARTNER_NOT_FOUND_SECONDS:
                self._miss_reloaded_at = now
                self._reload(wait=True)
            elif self._lock.locked():
                with self._lock:
                    pass  # a reload is under way: what it finds may include this endpoint
            partner = getattr(self, table).get(key)
        return partner

    def active(self) -> list[Partner]:
        if not self._reload_if_stale() and not self._by_code:
            self._reload(wait=True)
        return list(self._by_code.values())

    def clear(self) -> None:
        """Reload on the next lookup, and serve nothing older (this process changed a partner)."""
        self._invalid = True
        self._loaded_at = float("-inf")
        self._miss_reloaded_at = float("-inf")

    def _reload_if_stale(self) -> bool:
        if time.monotonic() - self._loaded_at < settings.PARTNER_CACHE_SECONDS:
            return False
        return self._reload(wait=False)

    def _reload(self, *, wait: bool) -> bool:
        """Read the configuration again; True when this thread did."""
        # With a configuration in hand, a routine refresh never waits for another
        # thread's (a slow `default` must not hold every thread): it serves the cached
        # copy. A lookup that missed waits, and reads again unless that reload began
        # after it asked.
        asked = time.monotonic()
        if not self._lock.acquire(blocking=wait or self._invalid or not self._by_code):
            return False
        try:
            if self._loaded_at >= asked:
                return False
            started = time.monotonic()
            try:
                with configuration_read():
                    partners = partner_list_served()
            except DatabaseError:
                if not self._by_code:
                    raise
                # Keep serving the last known configuration while `default` is away,
                # and try again after PARTNER_CACHE_SECONDS, not on every request.
                logger.exception("cannot reload partner configuration; serving the cached copy")
                self._loaded_at = started
                return False
            self._by_endpoint = {endpoint_key(p.endpoint_path): p for p in partners}
            self._by_extra_path = {endpoint_key(path): p for p in partners for path in p.extra_paths or []}
            self._by_code = {p.partner_code: p for p in partners}
            self._loaded_at = started
            self._invalid = False
            return True
        finally:
            self._lock.release()


partner_directory = PartnerDirectory()
process_state_register("partners.partner_directory", partner_directory.clear)


def partner_list_served() -> list[Partner]:
    """Active partners this instance serves (POSTBACK_PARTNERS, or all)."""
    queryset = Partner.objects.filter(is_active=True).order_by("partner_code")
    if settings.POSTBACK_PARTNERS:
        queryset = queryset.filter(partner_code__in=settings.POSTBACK_PARTNERS)
    return list(queryset)


def partner_get_by_endpoint(endpoint_path: str) -> Partner | None:
    """The active partner served at `endpoint_path` (with or without slashes), or None."""
    return partner_directory.by_endpoint(endpoint_path)


def partner_get_by_extra_path(path: str) -> Partner | None:
    """The active partner that also accepts postbacks at the root path `path`, or None."""
    return partner_directory.by_extra_path(path)


def _partner_scope_ids(user) -> list[int] | None:
    """The scopes that apply to `user`, or None when the user sees every partner."""
    if user.is_superuser:
        return None
    scope_ids = getattr(user, "_partner_scope_ids", None)
    if scope_ids is None:
        scope_ids = list(
            PartnerScope.objects.filter(Q(user=user) | Q(group__in=user.groups.all())).values_list("pk", flat=True)
        )
        user._partner_scope_ids = scope_ids  # once per request: request.user lives as long as it
    return scope_ids or None


def partner_scope_applies(user) -> bool:
    """Whether `user` is limited to some partners (a PartnerScope applies to them)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return True
    return _partner_scope_ids(user) is not None


def partners_visible_to(user) -> QuerySet[Partner]:
    """The partners `user` may see in the admin and the API, ordered by code.

    Every partner for superusers and for users to whom no PartnerScope applies (none of
    their own, none on their groups); otherwise the partners of every scope that
    applies. Anonymous and inactive users see none.
    """
    if user is None or not user.is_authenticated or not user.is_active:
        return Partner.objects.none()
    scope_ids = _partner_scope_ids(user)
    if scope_ids is None:
        return Partner.objects.all()
    return Partner.objects.filter(
        pk__in=PartnerScope.partners.through.objects.filter(partnerscope_id__in=scope_ids).values("partner_id")
    )


def partner_is_visible_to(user, partner: Partner) -> bool:
    """Whether `user` may see `partner` (see partners_visible_to)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    scope_ids = _partner_scope_ids(user)
    return scope_ids is None or partners_visible_to(user).filter(pk=partner.pk).exists()
