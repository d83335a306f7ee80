"""Writes to partner configuration."""

import secrets
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from infra.databases import ProvisionResult, partner_database_provision
from partners.models import Partner, PartnerScope
from partners.selectors import partner_directory, partner_is_visible_to

# The seed partners `init_partners` creates when absent. InvolveAsia's mapping uses its
# real macro names; every field also accepts our own name, so the README's curl
# examples (which send sub_id=, usd_payout=, conversion_datetime=) land too.
SEED_PARTNERS: tuple[dict[str, Any], ...] = (
    {
        "partner_code": "involve_asia",
        "partner_name": "InvolveAsia",
        "endpoint_path": "/involve/event",
        # The addresses InvolveAsia was given by the service this one replaces.
        "extra_paths": ["/involve/event", "/postback/involve/event"],
        "cloud_run_service_name": "bytec-public-postback",
        "database_name": "involve_asia_db",
        "parameter_mapping": {
            "sub_id": "aff_sub",
            "media_id": "aff_sub2",
            "click_id": "aff_sub3",
            "usd_sale_amount": "usd_sale_amount",
            "usd_earning": "usd_payout",
            "offer_id": "offer_id",
            "offer_name": "offer_name",
            "conversion_id": "conversion_id",
            "conversion_datetime": "datetime_conversion",
            "status": "conversion_status",
            "currency": "conversion_currency",
            "sale_amount_local": "sale_amount_local",
            "payout_local": "payout_local",
        },
        "status_mapping": {"pending": "pending", "approved": "approved", "rejected": "rejected"},
    },
    {
        "partner_code": "rector",
        "partner_name": "Rector",
        "endpoint_path": "/rector/event",
        "cloud_run_service_name": "rector-postback",
        "database_name": "rector_db",
        "parameter_mapping": {
            "media_id": "media_id",
            "sub_id": "sub_id",
            "usd_sale_amount": "usd_sale_amount",
            "usd_earning": "usd_earning",
            "offer_name": "offer_name",
            "conversion_id": "conversion_id",
            "conversion_datetime": "conversion_datetime",
            "click_id": "click_id",
        },
    },
)


@dataclass(frozen=True)
class SeedResult:
    partner: Partner
    created: bool


def partner_create(**fields: Any) -> Partner:
    """Validate and store a new partner (provisioning is a separate step). Raises
    ValidationError (Partner.save validates) when it would be invalid."""
    partner = Partner(**fields)
    partner.save()
    partner_directory.clear()
    return partner


def partner_seed(*, definition: dict[str, Any]) -> SeedResult:
    """Create a seed partner unless one with its code exists; never modify an existing one."""
    with transaction.atomic():
        existing = Partner.objects.select_for_update().filter(partner_code=definition["partner_code"]).first()
        if existing is not None:
            return SeedResult(partner=existing, created=False)
        return SeedResult(partner=partner_create(**definition), created=True)


def partner_provision(*, partner: Partner) -> ProvisionResult:
    """Create the partner's database if missing and migrate its schema."""
    result = partner_database_provision(partner=partner)
    partner_directory.clear()
    return result


def partner_scope_grant_creator(*, user: Any, partner: Partner) -> bool:
    """A user limited to some partners who adds one may see it: it joins their own scope.

    Nothing changes for users who see every partner. Returns whether a scope changed.
    """
    if partner_is_visible_to(user, partner):
        return False
    scope, _ = PartnerScope.objects.get_or_create(user=user)
    scope.partners.add(partner)
    user._partner_scope_ids = None  # the per-request cache of partners_visible_to
    return True


def partner_secret_rotate(*, partner: Partner) -> str:
    """Give the partner a new random postback secret and return it (shown once, to copy).

    The old secret stops working as soon as every worker reloads its configuration
    (within PARTNER_CACHE_SECONDS).
    """
    secret = secrets.token_urlsafe(32)
    partner.postback_secret = secret
    partner.save(update_fields=["postback_secret", "updated_at"])
    partner_directory.clear()
    return secret


def partner_secret_clear(*, partner: Partner) -> None:
    """Remove the partner's secret: postbacks are accepted without a token again."""
    partner.postback_secret = ""
    partner.save(update_fields=["postback_secret", "updated_at"])
    partner_directory.clear()


# Admin roles: (app_label, model, actions) per group. Conversions are read-only for all.
ADMIN_GROUPS: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    "Account managers": (
        ("partners", "partner", ("add", "change", "view")),
        ("conversions", "partnerconversion", ("view",)),
    ),
    "Analysts": (
        ("partners", "partner", ("view",)),
        ("conversions", "partnerconversion", ("view",)),
    ),
}


def admin_grants_add(group: str, *grants: tuple[str, str, tuple[str, ...]]) -> None:
    """Another app's models for an admin group (called from its AppConfig.ready)."""
    ADMIN_GROUPS[group] = (*ADMIN_GROUPS[group], *(grant for grant in grants if grant not in ADMIN_GROUPS[group]))


def admin_groups_ensure(*, apps: Any = None) -> list[str]:
    """Create the admin groups and give them exactly their permissions (idempotent).

    `apps` is a migration's historical registry, or None for the live models. Missing
    content types and permissions are created here, since Django only adds them after
    `migrate` finishes.
    """
    from django.apps import apps as live_apps

    registry = apps or live_apps
    Group = registry.get_model("auth", "Group")
    Permission = registry.get_model("auth", "Permission")
    ContentType = registry.get_model("contenttypes", "ContentType")
    created = []
    for name, grants in ADMIN_GROUPS.items():
        group, was_created = Group.objects.get_or_create(name=name)
        if was_created:
            created.append(name)
        permissions = []
        for app_label, model, actions in grants:
            try:
                verbose = registry.get_model(app_label, model)._meta.verbose_name
            except LookupError:
                continue  # a model this migration state does not have yet: `init_partners` grants it
            content_type, _ = ContentType.objects.get_or_create(app_label=app_label, model=model)
            for action in actions:
                permission, _ = Permission.objects.get_or_create(
                    content_type=content_type,
                    codename=f"{action}_{model}",
                    defaults={"name": f"Can {action} {verbose}"},
                )
                permissions.append(permission)
        group.permissions.set(permissions)
    return created
