"""Conversion statuses and the changes a postback may make to a stored conversion.

Our statuses are pending, approved, rejected and paid. Each partner maps its own
values onto them (`Partner.status_mapping`). An update is applied when the new status
is *reachable* from the current one through permitted transitions, so a permitted
sequence (pending -> approved -> paid) ends in the same state whatever order its
postbacks arrive in: a late `pending` after `approved` is stale and never rolls back.
"""

from collections.abc import Iterable, Mapping
from functools import lru_cache

PENDING = "pending"
APPROVED = "approved"
REJECTED = "rejected"
PAID = "paid"
STATUSES = (PENDING, APPROVED, REJECTED, PAID)
STATUS_CHOICES = [(status, status.title()) for status in STATUSES]

DEFAULT_TRANSITIONS: tuple[tuple[str, str], ...] = (
    (PENDING, APPROVED),
    (PENDING, REJECTED),
    (APPROVED, REJECTED),  # a reversal
    (APPROVED, PAID),
)


def status_lookup(status_mapping: Mapping[str, str]) -> dict[str, str]:
    """Partner value (case-insensitive) -> our status; our own names always work too."""
    lookup = {status: status for status in STATUSES}
    # Entries naming no status of ours are ignored here; the admin refuses them on save.
    lookup.update(
        {str(value).strip().lower(): status for value, status in status_mapping.items() if status in STATUSES}
    )
    return lookup


@lru_cache(maxsize=512)
def reachable_statuses(extra_transitions: tuple[tuple[str, str], ...]) -> dict[str, frozenset[str]]:
    """For each status, every status reachable from it through permitted transitions."""
    edges: dict[str, set[str]] = {status: set() for status in STATUSES}
    for source, target in (*DEFAULT_TRANSITIONS, *extra_transitions):
        if source in edges and target in edges:
            edges[source].add(target)
    reachable = {}
    for start in STATUSES:
        seen: set[str] = set()
        frontier = list(edges[start])
        while frontier:
            status = frontier.pop()
            if status not in seen:
                seen.add(status)
                frontier.extend(edges[status])
        reachable[start] = frozenset(seen)
    return reachable


def transition_permitted(current: str | None, new: str, extra_transitions: Iterable[Iterable[str]]) -> bool:
    """May a conversion in `current` status move to `new`? (None: no status known yet.)"""
    if current is None or current == new:
        return True
    key = tuple(tuple(pair) for pair in extra_transitions if len(pair) == 2)
    return new in reachable_statuses(key).get(current, frozenset())


def status_mapping_error(mapping: object) -> str | None:
    """Why `mapping` is not a valid {partner_value: our_status} mapping, or None."""
    if not isinstance(mapping, dict):
        return "Must be an object of the partner's value -> our status."
    seen: dict[str, str] = {}
    for value, status in mapping.items():
        key = str(value).strip().lower()
        if not key:
            return "A partner value must not be empty."
        if status not in STATUSES:
            return f"'{value}' maps to '{status}', which is not one of our statuses ({', '.join(STATUSES)})."
        if key in seen:
            return f"'{value}' is listed twice."
        seen[key] = status
    return None


def status_transitions_error(transitions: object) -> str | None:
    """Why `transitions` is not a list of [from, to] status pairs, or None."""
    if not isinstance(transitions, list):
        return "Must be a list of [from, to] status pairs."
    for pair in transitions:
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            return f"{pair!r} is not a [from, to] pair."
        for status in pair:
            if status not in STATUSES:
                return f"'{status}' is not one of our statuses ({', '.join(STATUSES)})."
        if pair[0] == pair[1]:
            return f"{pair[0]} -> {pair[1]} is not a change."
    return None
