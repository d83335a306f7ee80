import datetime
import re
import zoneinfo
from functools import cached_property, lru_cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinLengthValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

from infra.addresses import IPNetwork, networks_parse
from infra.masking import url_mask_password
from partners.lifecycle import status_mapping_error, status_transitions_error
from partners.mapping import (
    CANONICAL_FIELDS,
    TOKEN_PARAM,
    parameter_name_error,
    postback_example,
    postback_example_rows,
)

ENDPOINT_SEGMENT = r"[A-Za-z0-9._~-]+"
ENDPOINT_PATH_RE = re.compile(rf"^/?{ENDPOINT_SEGMENT}(/{ENDPOINT_SEGMENT})*/?$")
# Postbacks arrive at /partner/<endpoint_path>: a path that repeats it would be /partner/partner/...
ENDPOINT_PREFIX = "partner"
DATABASE_NAME_RE = r"^[a-z_][a-z0-9_]{0,62}$"
DATABASE_NAME_SUFFIX = "_db"
DATABASE_NAME_MAX_LENGTH = 63
# /partner/<endpoint_path>/stats and /conversions are the read API of a partner, so an
# endpoint ending in one of these segments would be unreachable for postbacks.
RESERVED_ENDPOINT_SUFFIXES = ("stats", "conversions")


def endpoint_key(endpoint_path: str) -> str:
    """The lookup form of an endpoint path: no leading or trailing slash."""
    return endpoint_path.strip("/")


def endpoint_path_error(endpoint_path: str, *, stored: str | None = None) -> str | None:
    """Why `endpoint_path` cannot be a partner's endpoint, or None.

    Paths are case-sensitive, so capitals are refused (a network that sends the other case
    would get 404): except in `stored`, an endpoint already saved, which networks may
    already post to.
    """
    if not ENDPOINT_PATH_RE.match(endpoint_path):
        return "Use path segments of letters, digits, '.', '_', '~' or '-', e.g. /involve/event."
    key = endpoint_key(endpoint_path)
    segments = key.split("/")
    if segments[0].lower() == ENDPOINT_PREFIX:
        rest = "/".join(segments[1:]) or "event"
        return (
            f"Leave out /{ENDPOINT_PREFIX}: enter /{rest.lower()}, and its URL is /{ENDPOINT_PREFIX}/{rest.lower()} "
            f"(this path would make it /{ENDPOINT_PREFIX}/{key})."
        )
    if any(segment in (".", "..") for segment in segments):
        return "A segment may not be '.' or '..': clients resolve them away before sending."
    if segments[-1] in RESERVED_ENDPOINT_SUFFIXES:
        return (
            f"An endpoint path may not end in /{' or /'.join(RESERVED_ENDPOINT_SUFFIXES)}: "
            f"/partner/<endpoint>/stats and /partner/<endpoint>/conversions are the partner's read API."
        )
    if key != key.lower() and (stored is None or key != endpoint_key(stored)):
        return (
            f"Use lowercase: /{key.lower()}. Endpoint paths are case-sensitive, so a network that "
            "sends another case than the one saved would get 404."
        )
    return None


# The first segments an extra path may not take: the service's own addresses, so an extra
# path can never shadow /partner/..., the admin, the API, the probes or the static files.
RESERVED_ROOTS = frozenset({"partner", "admin", "api", "static", "health", "info", "metrics", "favicon.ico"})
EXTRA_PATHS_MAX = 10
EXTRA_PATH_MAX_LENGTH = 100  # as an endpoint path


def extra_path_error(path: object, *, stored: list[str] | None = None) -> str | None:
    """Why `path` cannot be one of a partner's extra paths (served at the root), or None.

    As an endpoint path (segments, '.' and '..' refused, lowercase unless already stored),
    and never under one of the service's own first segments (RESERVED_ROOTS).
    """
    if not isinstance(path, str) or not ENDPOINT_PATH_RE.match(path):
        return f"'{str(path)[:60]}': use path segments of letters, digits, '.', '_', '~' or '-', e.g. /involve/event."
    key = endpoint_key(path)
    if len(key) > EXTRA_PATH_MAX_LENGTH:
        return f"/{key[:40]}…: at most {EXTRA_PATH_MAX_LENGTH} characters."
    segments = key.split("/")
    if segments[0].lower() in RESERVED_ROOTS:
        return (
            f"/{key}: /{segments[0]} is one of the service's own addresses "
            f"(/{', /'.join(sorted(RESERVED_ROOTS))}); an extra path may not start with it."
        )
    if any(segment in (".", "..") for segment in segments):
        return f"/{key}: a segment may not be '.' or '..'."
    if key != key.lower() and key not in {endpoint_key(old) for old in stored or []}:
        return f"/{key}: use lowercase (/{key.lower()}); paths are case-sensitive."
    return None


def database_name_default(partner_code: str, *, exclude_pk: int | None = None) -> str:
    """A database name for a new partner: `<code>_db`, a valid identifier, not taken
    by another partner (`<code>_2_db`, `<code>_3_db`, ... when it is)."""
    stem = re.sub(r"[^a-z0-9_]", "_", partner_code.lower()) or "partner"
    if not re.match(r"[a-z_]", stem):
        stem = f"p_{stem}"
    taken = set(
        Partner.objects.exclude(pk=exclude_pk)
        .filter(database_name__startswith=stem[:20])
        .values_list("database_name", flat=True)
    )
    taken.add("default")
    for number in range(1, 10_000):
        tail = DATABASE_NAME_SUFFIX if number == 1 else f"_{number}{DATABASE_NAME_SUFFIX}"
        name = stem[: DATABASE_NAME_MAX_LENGTH - len(tail)] + tail
        if name not in taken:
            return name
    raise ValidationError({"database_name": "Choose a database name: every default one is taken."})


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
    extra_paths = models.JSONField(
        default=list,
        blank=True,
        help_text="Further paths served exactly like the endpoint, at the root: /involve/event answers at "
        "https://<host>/involve/event (the addresses networks were given before).",
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
    token_param = models.CharField(
        max_length=100,
        default="token",
        help_text="The query parameter that carries the secret (the previous service's networks send ts_token).",
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

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Validate (full_clean) before every save: a partner saved from code, not only
        from the admin, cannot be invalid. Raises ValidationError naming each field.

        A save of some fields only (`update_fields`: a secret rotated, a time zone set by a
        report source) validates those fields, so a partner stored before a rule was
        tightened can still have its secret rotated."""
        update_fields = kwargs.get("update_fields")
        if update_fields is None:
            self.full_clean()
        else:
            others = [f.name for f in self._meta.fields if f.name not in set(update_fields)]
            self.clean_fields(exclude=others)
        super().save(*args, **kwargs)

    @classmethod
    def from_db(cls, db, field_names, values):
        instance = super().from_db(db, field_names, values)
        # What is stored: an endpoint networks already post to is kept as it is (endpoint_path_error).
        # Read from __dict__: a deferred field (a list loaded with .only()) is not fetched for it.
        instance._stored_endpoint_path = instance.__dict__.get("endpoint_path")
        instance._stored_extra_paths = instance.__dict__.get("extra_paths")
        return instance

    def clean_fields(self, exclude=None) -> None:
        if not self.database_name and self.partner_code and (not exclude or "database_name" not in exclude):
            self.database_name = database_name_default(self.partner_code, exclude_pk=self.pk)
        super().clean_fields(exclude)

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
    def postback_example(self) -> str:
        """A query string in the partner's own parameter names, an example value each."""
        return postback_example(mapping=self.parameter_mapping or {}, status_mapping=self.status_mapping)

    @property
    def postback_example_rows(self) -> list[tuple[str, str, str]]:
        """(our field, the partner's parameter, an example value) per mapped field."""
        return postback_example_rows(mapping=self.parameter_mapping or {}, status_mapping=self.status_mapping)

    @property
    def allowed_ips_list(self) -> list[str]:
        """The allowlist's networks, for display (as written when it cannot be read)."""
        try:
            return [str(network) for network in self.allowed_networks]
        except ValueError:
            return [self.allowed_ips]

    @property
    def database_url_masked(self) -> str:
        return url_mask_password(self.database_url)

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.endpoint_path:
            error = endpoint_path_error(self.endpoint_path, stored=getattr(self, "_stored_endpoint_path", None))
            if error:
                errors["endpoint_path"] = error
            else:
                self.endpoint_path = "/" + endpoint_key(self.endpoint_path)
        if self.database_name == "default":
            errors["database_name"] = "'default' is the configuration database; choose another name."
        mapping_error = parameter_mapping_error(self.parameter_mapping)
        if mapping_error:
            errors["parameter_mapping"] = mapping_error
        token_error = self._token_param_error()
        if token_error:
            errors["token_param"] = token_error
        paths_error = self._extra_paths_error()
        if paths_error:
            errors["extra_paths"] = paths_error
        status_error = status_mapping_error(self.status_mapping)
        if status_error:
            errors["status_mapping"] = status_error
        transitions_error = status_transitions_error(self.status_transitions)
        if transitions_error:
            errors["status_transitions"] = transitions_error
        if errors:
            raise ValidationError(errors)

    def _token_param_error(self) -> str | None:
        name = self.token_param
        if name == TOKEN_PARAM:
            return None
        error = parameter_name_error(name) if name else "Name the parameter that carries the secret (e.g. token)."
        if error:
            return error
        if not name.lower().endswith(TOKEN_PARAM):
            # The logs mask every parameter whose name ends so (infra/masking.py), whoever's it is.
            return f"'{name}': the secret's parameter name must end in 'token' (e.g. ts_token), so logs mask it."
        if isinstance(self.parameter_mapping, dict) and name in self.parameter_mapping.values():
            return f"'{name}' is mapped to one of our fields: the secret's parameter is never stored."
        return None

    def _extra_paths_error(self) -> str | None:
        """Why the extra paths cannot be saved, or None; they are normalised (/a/b) in place."""
        paths = self.extra_paths
        if not isinstance(paths, list):
            return 'Must be a list of paths, e.g. ["/involve/event"].'
        if len(paths) > EXTRA_PATHS_MAX:
            return f"At most {EXTRA_PATHS_MAX} extra paths."
        stored = getattr(self, "_stored_extra_paths", None) or []
        keys: list[str] = []
        for path in paths:
            error = extra_path_error(path, stored=stored)
            if error:
                return error
            key = endpoint_key(path)
            if key in keys:
                return f"/{key} is listed twice."
            keys.append(key)
        if not keys:
            self.extra_paths = []
            return None
        taken = {
            endpoint_key(path): code
            for code, others in Partner.objects.exclude(pk=self.pk).values_list("partner_code", "extra_paths")
            for path in others or []
            if isinstance(path, str)
        }
        for key in keys:
            if key in taken:
                return f"/{key} is already an extra path of partner '{taken[key]}'."
        self.extra_paths = [f"/{key}" for key in keys]
        return None


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
        name_error = parameter_name_error(param)
        if name_error:
            return f"'{field}': {name_error}"
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
