"""Decide, on its own: a mapped postback and the original, if any -> what to do."""

from decimal import Decimal

from conversions.ingest.decide import REPLAY_NOTE, decide
from conversions.models import PartnerConversion
from conversions.outcomes import Outcome


def original(**values) -> PartnerConversion:
    return PartnerConversion(
        conversion_id="c1",
        status=values.pop("status", "pending"),
        usd_earning=values.pop("usd_earning", Decimal("10.00")),
        request_digests=values.pop("request_digests", ["first"]),
        **values,
    )


def test_without_an_original_the_postback_becomes_it():
    assert decide(incoming={"conversion_id": "c1"}, original=None, transitions=[]).outcome is Outcome.SUCCESS


def test_nothing_different_is_a_duplicate():
    decision = decide(
        incoming={"status": "pending", "usd_earning": Decimal("10.00")}, original=original(), transitions=[]
    )
    assert decision.outcome is Outcome.DUPLICATE and decision.changes == {}


def test_a_permitted_change_is_an_update_with_what_changes():
    incoming = {"status": "approved", "status_raw": "2", "usd_earning": Decimal("5.00")}
    decision = decide(incoming=incoming, original=original(), transitions=[])
    assert decision.outcome is Outcome.UPDATED
    assert decision.changes == {"status": ["pending", "approved"], "usd_earning": [Decimal("10.00"), Decimal("5.00")]}
    assert decision.updates(incoming) == {"status": "approved", "usd_earning": Decimal("5.00"), "status_raw": "2"}


def test_a_change_that_rolls_the_state_back_is_stale():
    decision = decide(incoming={"status": "pending"}, original=original(status="approved"), transitions=[])
    assert decision.outcome is Outcome.STALE
    assert decision.note == "stale: status 'pending' after 'approved' is not applied"


def test_a_partner_may_permit_more_transitions():
    decision = decide(
        incoming={"status": "approved"}, original=original(status="rejected"), transitions=[["rejected", "approved"]]
    )
    assert decision.outcome is Outcome.UPDATED


def test_a_request_already_applied_is_never_applied_again():
    stored = original(status="approved", usd_earning=Decimal("5.00"), request_digests=["first", "correction"])
    replay = decide(incoming={"usd_earning": Decimal("10.00")}, original=stored, transitions=[], digest="first")
    assert (replay.outcome, replay.note) == (Outcome.DUPLICATE, REPLAY_NOTE)
    fresh = decide(incoming={"usd_earning": Decimal("10.00")}, original=stored, transitions=[], digest="other")
    assert fresh.outcome is Outcome.UPDATED
