import datetime
import re
import zoneinfo
from functools import cached_property, lru_cache

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinLengthValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

from infra.addresses import IPNetwork, networks_parse
from infra.masking import url_mask_password
from partners.lifecycle import status_mapping_error, status_transitions_error
from partners.mapping import CANONICAL_FIELDS

ENDPOINT_SEGMENT = r"[A-Za-z0-9._~-]+"
ENDPOINT_PATH_RE = re.compile(rf"^/?{ENDPOINT_SEGMENT}(/{ENDPOINT_SEGMENT})*/?$")
DATABASE_NAME_RE = r"^[a-z_][a-z0-9_]{0,62}$"
# /partner/<endpoint_path>/stats and /conversions are the read API of a partner, so an
# endpoint ending in one of these segments would be unreachable for postbacks.
RESERVED_ENDPOINT_SUFFIXES = ("stats", "conversions")


def endpoint_key(endpoint_path: str) -> str:
    """The lookup form of an endpoint path: no leading or trailing slash."""
    return endpoint_path.strip("/")


def _validate_allowed_ips(value: str) -> None:
    try:
        networks_parse(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from exc


@lru_cache(maxsize=256)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def _validate_timezone(value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(f"'{value}' is not an IANA time zone (e.g. UTC, Asia/Singapore).") from exc


timezone_validate = _validate_timezone


class Partner(models.Model):
    """An ad network or affiliate partner sending postbacks to its own endpoint."""

    partner_code = models.CharField(
        max_length=50,
        unique=True,
        validators=[RegexValidator(r"^[a-z0-9_]+$", "Use lowercase letters, digits and underscores.")],
        help_text="Stable identifier, e.g. involve_asia.",
    )
    partner_name = models.CharField(max_length=100)
    endpoint_path = models.CharField(
        max_length=100,
        unique=True,
        help_text="Path after /partner, e.g. /involve/event.",
    )
    endpoint_url = models.CharField(max_length=500, blank=True, default="")
    cloud_run_service_name = models.CharField(max_length=100, blank=True, default="")
    cloud_run_region = models.CharField(max_length=50, blank=True, default="asia-southeast1")
    cloud_run_project_id = models.CharField(max_length=100, blank=True, default="")
    database_name = models.CharField(
        max_length=63,
        unique=True,
        validators=[
            RegexValidator(
                DATABASE_NAME_RE,
                "Use lowercase letters, digits and underscores, starting with a letter.",
            )
        ],
        help_text="Also the database alias, e.g. involve_asia_db.",
    )
    database_url = models.CharField(
        max_length=500,
        blank=True,
        default="",
        help_text="Leave empty to use the PARTNER_DATABASE_URL template.",
    )
    parameter_mapping = models.JSONField(
        default=dict,
        blank=True,
        help_text="Our field -> the partner's parameter name.",
    )
    # The order the account manager gave the rows of parameter_mapping and status_mapping
    # ({"parameter_mapping": [keys...], ...}): PostgreSQL's jsonb keeps no key order.
    row_order = models.JSONField(default=dict, blank=True, editable=False)
    status_mapping = models.JSONField(
        default=dict,
        blank=True,
        help_text="The partner's status value -> our status (pending, approved, rejected, paid).",
    )
    status_transitions = models.JSONField(
        default=list,
        blank=True,
        help_text="Status changes permitted beyond the defaults, as [from, to] pairs.",
    )
    timezone = models.CharField(
        max_length=64,
        default="UTC",
        validators=[_validate_timezone],
        help_text="Time zone of datetimes the partner sends without an offset.",
    )
    is_active = models.BooleanField(default=True)
    enable_logging = models.BooleanField(default=True)
    max_daily_requests = models.PositiveIntegerField(
        default=100000,
        help_text="Postbacks accepted per day (the partner's local day); 0 means no limit.",
    )
    # Kept in clear because HMAC signatures need it; never shown, logged or stored with a conversion.
    postback_secret = models.CharField(
        max_length=128,
        blank=True,
        default="",
        # Long enough that it cannot be guessed, and that masking it in stored text is unambiguous.
        validators=[MinLengthValidator(16)],
        help_text="When set, postbacks must carry it (token parameter or X-Postback-Token) or sign with it.",
    )
    allowed_ips = models.TextField(
        blank=True,
        default="",
        validators=[_validate_allowed_ips],
        help_text="IPs or CIDR ranges (IPv4/IPv6), comma or line separated; empty allows any client.",
    )
    data_retention_days = models.PositiveIntegerField(default=30, validators=[MinValueValidator(1)])
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "partners"
        ordering = ["partner_code"]

    def __str__(self) -> str:
        return f"{self.partner_name} ({self.partner_code})"

    @property
    def database_alias(self) -> str:
        """The Django alias of the partner's database, registered (or re-pointed at the
        partner's current URL) on first use: `.using(partner.database_alias)` just works."""
        from infra.databases.registry import alias_ensure

        return alias_ensure(self)

    @property
    def tzinfo(self) -> zoneinfo.ZoneInfo:
        """The partner's time zone (datetimes it sends without an offset, its local day)."""
        return _zone(self.timezone)

    def local_now(self, now: datetime.datetime | None = None) -> datetime.datetime:
        """`now` (default: this moment) in the partner's time zone."""
        from django.utils import timezone

        return (now or timezone.now()).astimezone(self.tzinfo)

    @property
    def has_postback_secret(self) -> bool:
        return bool(self.postback_secret)

    @cached_property
    def allowed_networks(self) -> tuple[IPNetwork, ...]:
        """The parsed allowlist, once per loaded Partner (the directory reloads fresh instances)."""
        return networks_parse(self.allowed_ips)

    @property
    def database_url_masked(self) -> str:
        return url_mask_password(self.database_url)

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.endpoint_path:
            if not ENDPOINT_PATH_RE.match(self.endpoint_path):
                errors["endpoint_path"] = (
                    "Use path segments of letters, digits, '.', '_', '~' or '-', e.g. /involve/event."
                )
            elif endpoint_key(self.endpoint_path).rsplit("/", 1)[-1] in RESERVED_ENDPOINT_SUFFIXES:
                errors["endpoint_path"] = (
                    f"An endpoint path may not end in /{' or /'.join(RESERVED_ENDPOINT_SUFFIXES)}: "
                    f"/partner/<endpoint>/stats and /partner/<endpoint>/conversions are the partner's read API."
                )
            else:
                self.endpoint_path = "/" + endpoint_key(self.endpoint_path)
        if self.database_name == "default":
            errors["database_name"] = "'default' is the configuration database; choose another name."
        mapping_error = parameter_mapping_error(self.parameter_mapping)
        if mapping_error:
            errors["parameter_mapping"] = mapping_error
        status_error = status_mapping_error(self.status_mapping)
        if status_error:
            errors["status_mapping"] = status_error
        transitions_error = status_transitions_error(self.status_transitions)
        if transitions_error:
            errors["status_transitions"] = transitions_error
        if errors:
            raise ValidationError(errors)


def parameter_mapping_error(mapping: object) -> str | None:
    """Why `mapping` is not a valid {our_field: partner_param} mapping, or None."""
    if not isinstance(mapping, dict):
        return "Must be an object of our field -> the partner's parameter name."
    seen: dict[str, str] = {}
    for field, param in mapping.items():
        if field not in CANONICAL_FIELDS:
            return f"'{field}' is not one of our fields ({', '.join(CANONICAL_FIELDS)})."
        if not isinstance(param, str) or not param.strip():
            return f"'{field}' needs the partner's parameter name."
        if param == "token":
            return (
                "'token' is reserved for the partner's postback secret and is never stored; choose another parameter."
            )
        if param in seen:
            return f"'{param}' is mapped twice (to '{seen[param]}' and '{field}')."
        seen[param] = field
    return None


class PartnerScope(models.Model):
    """Limits one user, or the members of one group, to some partners.

    A user to whom no scope applies (none of their own, none on any of their groups),
    and every superuser, sees every partner. Scopes that apply add up: a user sees the
    partners of their own scope and of each of their groups' scopes.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="partner_scope",
    )
    group = models.OneToOneField(
        "auth.Group",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="partner_scope",
    )
    partners = models.ManyToManyField(
        Partner,
        blank=True,
        related_name="scopes",
        help_text="The partners this user or group may see. None selected: no partner at all.",
    )

    class Meta:
        db_table = "partner_scopes"
        constraints = [
            models.CheckConstraint(
                condition=(Q(user__isnull=False, group__isnull=True) | Q(user__isnull=True, group__isnull=False)),
                name="partner_scope_user_or_group",
                violation_error_message="A scope limits either one user or one group.",
            )
        ]

    def __str__(self) -> str:
        who = f"user {self.user}" if self.user_id else f"group {self.group}"
        return f"Partners of {who}"

    def clean(self) -> None:
        if bool(self.user_id) == bool(self.group_id):
            raise ValidationError("Choose either a user or a group (one of them, not both).")
