"""The one place where a stored decision is announced: a conversion recorded or changed.

Whatever must happen because a conversion was recorded or changed (forwarding it to
publishers writes a delivery to its outbox) registers a listener here. The store calls
the listeners with an Announcement just before it writes the change, and writes the
rows they return (Companion) in the same transaction as the conversion: both are
stored, or neither is, so a crash can never lose one. Listeners must be quick and do no
I/O of their own: they only say what to write.

Announced: an original recorded (`recorded`), and a change applied to one (`changed`:
a status or amount update), whatever brought it: a postback, a rejected postback
reprocessed in the admin, or a conversion recovered from a network's report (`source`).
Duplicates, stale changes and rejected postbacks are not announced.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from django.db import models

Event = Literal["recorded", "changed"]
Source = Literal["postback", "reprocess", "report", "import"]


@dataclass(frozen=True)
class Announcement:
    """A conversion about to be recorded or changed."""

    event: Event
    source: Source
    partner: Any
    conversion: dict[str, Any]  # its values once stored (the mapped fields, status, amounts)
    changes: dict[str, list[Any]] = field(default_factory=dict)  # `changed`: field -> [before, after]


@dataclass(frozen=True)
class Companion:
    """A row to write in the partner's database with the conversion, in its transaction.

    The store fills `conversion_field` with the conversion's id.
    """

    model: type[models.Model]
    values: dict[str, Any]
    conversion_field: str = "conversion_id"


Listener = Callable[[Announcement], list[Companion]]
_listeners: list[Listener] = []


def decision_listener(listener: Listener) -> Listener:
    """Register `listener` (usable as a decorator; registering twice is a no-op)."""
    if listener not in _listeners:
        _listeners.append(listener)
    return listener


def decision_listener_remove(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def decision_companions(announcement: Announcement) -> list[Companion]:
    """Every listener's rows for `announcement` (none when nothing listens)."""
    companions: list[Companion] = []
    for listener in _listeners:
        companions += listener(announcement)
    return companions
