"""Reprocess: a rejected postback settled again with the partner's current mapping.

The admin's action for rejected rows. The stored raw parameters are mapped again and the
row becomes the original, a duplicate or an update of its original exactly as a fresh
postback would (the same decision, decide.py), or stays rejected with the new errors.
"""

from django.db import IntegrityError, transaction

from conversions.ingest.decide import partner_postback_map
from conversions.ingest.hooks import Announcement, decision_companions
from conversions.ingest.limits import RAW_BODY_PARAMS
from conversions.ingest.statements import companions_insert
from conversions.ingest.store import MAPPED_COLUMNS, SETTLED_COLUMNS, Stored, conversion_settle, rejected_error
from conversions.models import PartnerConversion
from conversions.outcomes import Outcome
from partners.models import Partner


def conversion_reprocess(*, partner: Partner, conversion: PartnerConversion) -> Stored:
    """Settle a rejected row again (see the module doc); rows that are not rejected are left alone."""
    alias = partner.database_alias
    params = dict(conversion.raw_data or {})
    mapped = partner_postback_map(partner=partner, params=params)
    if RAW_BODY_PARAMS & params.keys():
        # The body could not be read when it arrived; reading the same bytes again cannot succeed.
        mapped.errors = {"body": "was unreadable when received", **mapped.errors}
    with transaction.atomic(using=alias):
        row = PartnerConversion.objects.using(alias).select_for_update().get(pk=conversion.pk)
        if row.processing_error is None:
            return Stored(outcome=Outcome.DUPLICATE if row.is_duplicate else Outcome.SUCCESS, conversion=row)
        if not mapped.is_valid:
            row.processing_error = rejected_error(mapped.errors)
            row.save(using=alias, update_fields=["processing_error", "updated_at"])
            return Stored(outcome=Outcome.INVALID, conversion=row, errors=mapped.errors)
        for name in MAPPED_COLUMNS:
            setattr(row, name, mapped.values.get(name))
        row.processing_error = None
        row.is_processed = True
        row.is_duplicate = False
        row.duplicate_of_id = None
        try:
            # The partial unique index decides, as for a fresh postback, whether this is the original.
            with transaction.atomic(using=alias):
                row.save(using=alias, update_fields=[*MAPPED_COLUMNS, *SETTLED_COLUMNS])
        except IntegrityError:
            incoming = {
                **mapped.values,
                "partner_id": row.partner_id,
                "raw_data": row.raw_data,
                "request_ip": row.request_ip,
            }
            stored = conversion_settle(
                partner=partner, alias=alias, incoming=incoming, digest=None, source="reprocess", existing=row
            )
            if stored is not None:
                return stored
            row.save(using=alias, update_fields=[*MAPPED_COLUMNS, *SETTLED_COLUMNS])  # its original vanished meanwhile
        recorded = Announcement(
            event="recorded",
            source="reprocess",
            partner=partner,
            conversion=row.canonical_values(),
        )
        companions_insert(alias=alias, conversion_id=row.pk, companions=decision_companions(recorded))
        return Stored(outcome=Outcome.SUCCESS, conversion=row)
