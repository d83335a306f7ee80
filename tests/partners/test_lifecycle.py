import pytest

from partners.lifecycle import status_lookup, status_mapping_error, status_transitions_error, transition_permitted


@pytest.mark.parametrize(
    ("current", "new", "permitted"),
    [
        (None, "approved", True),
        ("pending", "pending", True),
        ("pending", "approved", True),
        ("pending", "rejected", True),
        ("pending", "paid", True),  # through approved
        ("approved", "rejected", True),
        ("approved", "paid", True),
        ("approved", "pending", False),
        ("paid", "approved", False),
        ("rejected", "approved", False),
        ("paid", "rejected", False),
    ],
)
def test_default_transitions(current, new, permitted):
    assert transition_permitted(current, new, []) is permitted


def test_partner_extra_transitions_extend_the_defaults():
    assert transition_permitted("rejected", "approved", [["rejected", "approved"]])
    assert transition_permitted("rejected", "paid", [["rejected", "approved"]])


def test_invalid_stored_configuration_never_crashes_the_hot_path():
    assert not transition_permitted("paid", "pending", [["bogus", "pending"], ["x"]])
    assert status_lookup({"1": "approved", "2": "bogus"}) == {
        "pending": "pending",
        "approved": "approved",
        "rejected": "rejected",
        "paid": "paid",
        "1": "approved",
    }


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"1": "won"}, "'1' maps to 'won', which is not one of our statuses (pending, approved, rejected, paid)."),
        ({"A": "approved", "a": "pending"}, "'a' is listed twice."),
        ({" ": "approved"}, "A partner value must not be empty."),
        ([], "Must be an object of the partner's value -> our status."),
    ],
)
def test_status_mapping_validation(mapping, message):
    assert status_mapping_error(mapping) == message


@pytest.mark.parametrize(
    ("transitions", "message"),
    [
        ({}, "Must be a list of [from, to] status pairs."),
        ([["pending"]], "['pending'] is not a [from, to] pair."),
        ([["pending", "won"]], "'won' is not one of our statuses (pending, approved, rejected, paid)."),
        ([["paid", "paid"]], "paid -> paid is not a change."),
    ],
)
def test_status_transitions_validation(transitions, message):
    assert status_transitions_error(transitions) == message
