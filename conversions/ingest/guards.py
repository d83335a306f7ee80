"""Guards: whether a parsed postback may be stored at all.

The request limits (some parameters at all, their count, name and value lengths), who may post for the
partner (allowlist, secret, signature and its timestamp), and the partner's daily
quota, in that order: the cheap checks first, and a refused sender never uses up the
partner's quota. A refused postback raises Refused; nothing of it is stored.
"""

from conversions.ingest.access import postback_access_check
from conversions.ingest.limits import params_limits_check, params_present_check
from conversions.ingest.parse import Postback
from conversions.ingest.quota import partner_quota_consume
from conversions.ingest.refusals import Refusal, Refused
from partners.models import Partner


def postback_access_guard(*, partner: Partner, postback: Postback) -> Refusal | None:
    """The refusal of the first request limit or access check the postback fails, or None:
    what a network gets before anything is counted (the test postback stops here too)."""
    return (
        params_present_check(postback.params, postback.errors)
        or params_limits_check(postback.params)
        or postback_access_check(partner=partner, postback=postback)
    )


def postback_guard(*, partner: Partner, postback: Postback) -> None:
    """Raise Refused with the first check the postback fails; count it against the quota
    otherwise (PartnerDatabaseUnavailable when the quota's counter cannot be reached)."""
    refusal = postback_access_guard(partner=partner, postback=postback) or partner_quota_consume(partner=partner)
    if refusal is not None:
        raise Refused(refusal)
