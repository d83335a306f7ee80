"""Decide: what a valid postback means for its conversion, given the original, if any.

Pure (no database, no clock): the same decision is taken for a postback as it arrives,
for a rejected postback reprocessed in the admin, for the admin's dry run, and for a
conversion recovered from a network's report.

- no original: the postback becomes it (SUCCESS);
- nothing it sends differs from the original's status and amounts: DUPLICATE (amounts in
  a currency the original has none in, while it has them in the other, are the same money
  said twice, not a difference: a conversion recovered from a report in one currency, then
  its postback giving both);
- a permitted change (pending -> approved, an amount correction): UPDATED, unless it is
  the very same request as one already applied to the original (a replay, which would
  undo what came after it): DUPLICATE;
- a change that would roll the state back (a late pending after approved): STALE, kept
  in the history as not applied.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from conversions.models import PartnerConversion
from conversions.outcomes import Outcome
from partners.lifecycle import transition_permitted
from partners.mapping import MappedPostback, postback_map
from partners.models import Partner

# What a later postback may change on the original: its state and its money.
LIFECYCLE_FIELDS = ("status", "usd_sale_amount", "usd_earning", "sale_amount_local", "payout_local", "currency")
REPLAY_NOTE = "the very same request was already applied to this conversion"
# A conversion's money is said in USD and in its local currency (the local amounts with
# their code): two sides of the same money.
MONEY_SIDES = (("usd_sale_amount", "usd_earning"), ("sale_amount_local", "payout_local", "currency"))


@dataclass(frozen=True)
class Decision:
    """What to do with a valid postback (Outcome.SUCCESS, DUPLICATE, UPDATED or STALE)."""

    outcome: Outcome
    changes: dict[str, list[Any]] = field(default_factory=dict)  # field -> [before, after]
    note: str = ""

    def updates(self, incoming: Mapping[str, Any]) -> dict[str, Any]:
        """The original's new values for an UPDATED decision (its status as sent, too)."""
        values = {name: after for name, (_before, after) in self.changes.items()}
        if "status" in self.changes:
            values["status_raw"] = incoming.get("status_raw")
        return values


def partner_postback_map(*, partner: Partner, params: Mapping[str, Any]) -> MappedPostback:
    """The partner's parameters mapped and coerced onto our fields, with its own settings."""
    return postback_map(
        mapping=partner.parameter_mapping, params=params, tz=partner.tzinfo, status_mapping=partner.status_mapping
    )


def decide(
    *,
    incoming: Mapping[str, Any],
    original: PartnerConversion | None,
    transitions: Iterable[Iterable[str]],
    digest: str | None = None,
) -> Decision:
    """The decision for a valid postback's mapped values `incoming` (see the module doc)."""
    if original is None:
        return Decision(Outcome.SUCCESS)
    changes = conversion_changes(original=original, incoming=incoming)
    known = {name: getattr(original, name) for name in LIFECYCLE_FIELDS}
    if all(before is None and money_elsewhere(known=known, name=name) for name, (before, _after) in changes.items()):
        return Decision(Outcome.DUPLICATE)
    before, after = original.status, incoming.get("status") or original.status
    if transition_permitted(before, after, transitions):
        if digest is not None and digest in (original.request_digests or ()):
            # It would apply again what it applied once, over what came after it.
            return Decision(Outcome.DUPLICATE, note=REPLAY_NOTE)
        return Decision(Outcome.UPDATED, changes=changes)
    return Decision(Outcome.STALE, changes=changes, note=f"stale: status '{after}' after '{before}' is not applied")


def conversion_changes(*, original: PartnerConversion, incoming: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Lifecycle fields `incoming` sends with a value different from the original's."""
    return {
        name: [getattr(original, name), incoming[name]]
        for name in LIFECYCLE_FIELDS
        if incoming.get(name) is not None and incoming[name] != getattr(original, name)
    }


def money_elsewhere(*, known: Mapping[str, Any], name: str) -> bool:
    """Whether `name` belongs to the side of the money (USD, or local amounts and their
    currency) in which `known` has no amount, while it has amounts in the other side: a
    value there says the same money in another currency, not something new about it."""
    for side, other in (MONEY_SIDES, MONEY_SIDES[::-1]):
        if name in side:
            return not _has_amount(known, side) and _has_amount(known, other)
    return False


def _has_amount(known: Mapping[str, Any], side: tuple[str, ...]) -> bool:
    return any(known.get(name) is not None for name in side if name != "currency")
