"""A publisher's payout for a conversion: its rule (or the offer's override) applied, half-up to cents."""

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from publishers.models import FIXED, PERCENT_EARNING, PERCENT_SALE

CENT = Decimal("0.01")
HUNDRED = Decimal(100)


def payout_compute(*, kind: str, value: Decimal, sale_amount: Any, earning: Any) -> Decimal | None:
    """The payout a rule gives; None when the amount it is a percentage of is unknown."""
    if kind == FIXED:
        return Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)
    base = {PERCENT_SALE: sale_amount, PERCENT_EARNING: earning}[kind]
    if base is None or base == "":
        return None
    return (Decimal(base) * Decimal(value) / HUNDRED).quantize(CENT, rounding=ROUND_HALF_UP)


def payout_rule(
    *, default: tuple[str, Decimal], overrides: dict[str, tuple[str, Decimal]], offer_id: Any, offer_name: Any
) -> tuple[str, Decimal]:
    """The rule for a conversion's offer: an override by offer id, else by exact offer name, else the default."""
    for key in (offer_id, offer_name):
        if key and key in overrides:
            return overrides[key]
    return default
