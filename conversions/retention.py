"""Retention: delete each partner's conversions older than its `data_retention_days`."""

import datetime
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from conversions.models import DailyCounter, PartnerConversion
from infra.databases import partner_database
from partners.models import Partner


@dataclass(frozen=True)
class PurgeResult:
    partner: Partner
    cutoff: datetime.datetime
    conversions: int
    counters: int
    batches: int
    dry_run: bool

    def describe(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        batches = "" if self.dry_run else f" in {self.batches} batch(es)"
        return (
            f"{self.partner.partner_code} ({self.partner.database_name}): {verb} {self.conversions} conversion(s)"
            f"{batches} and {self.counters} daily counter(s) received before {self.cutoff.isoformat()} "
            f"(retention {self.partner.data_retention_days} days)"
        )


def conversions_purge(
    *, partner: Partner, batch_size: int = 1000, dry_run: bool = False, now: datetime.datetime | None = None
) -> PurgeResult:
    """Delete the partner's conversions received more than `data_retention_days` ago.

    Deletes oldest first, `batch_size` rows per short transaction, so writers of new
    postbacks are never blocked for long and an interrupted run keeps what it did.
    Raises PartnerDatabaseUnavailable when the partner's database cannot be purged.
    """
    cutoff = (now or timezone.now()) - datetime.timedelta(days=partner.data_retention_days)
    with partner_database(partner) as alias:
        expired = PartnerConversion.objects.using(alias).filter(partner_id=partner.pk, received_at__lt=cutoff)
        old_counters = DailyCounter.objects.using(alias).filter(partner_id=partner.pk, day__lt=cutoff.date())
        if dry_run:
            return PurgeResult(partner, cutoff, expired.count(), old_counters.count(), 0, dry_run=True)
        deleted = batches = 0
        while True:
            ids = list(expired.order_by("received_at", "id").values_list("id", flat=True)[:batch_size])
            if not ids:
                break
            with transaction.atomic(using=alias):
                # The ORM delete also unlinks duplicates whose original goes (duplicate_of SET NULL).
                PartnerConversion.objects.using(alias).filter(pk__in=ids).delete()
            deleted += len(ids)
            batches += 1
            if len(ids) < batch_size:
                break
        counters, _ = old_counters.delete()
    return PurgeResult(partner, cutoff, deleted, counters, batches, dry_run=False)
