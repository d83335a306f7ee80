"""Writes to conversions that people start (the admin's actions). The postback's own
writes are the ingest pipeline's (conversions/ingest/)."""

from dataclasses import dataclass, field

from django.db import DatabaseError
from django.db.models import QuerySet

from conversions.ingest.reprocess import conversion_reprocess
from conversions.models import PartnerConversion
from conversions.outcomes import Outcome
from infra.databases import ConfigurationUnavailable
from partners.models import Partner


@dataclass(frozen=True)
class Reprocessed:
    """What reprocessing made of invalid rows, by outcome, and why it stopped early, if it did."""

    counts: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    stopped: str = ""  # the error that stopped it; the counts are what was done before

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def conversions_reprocess(*, partner: Partner, conversions: QuerySet[PartnerConversion]) -> Reprocessed:
    """Settle again, with the partner's current mapping, every invalid row among `conversions`
    (conversion_reprocess, one row and one transaction at a time); a database that fails
    stops it, keeping what was done."""
    result = Reprocessed()
    try:
        for conversion in list(conversions.filter(processing_error__isnull=False).only("pk")):
            result.counts[conversion_reprocess(partner=partner, conversion=conversion).outcome] += 1
    except (DatabaseError, ConfigurationUnavailable) as exc:
        return Reprocessed(counts=result.counts, stopped=str(exc))
    return result
