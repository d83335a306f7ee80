"""Django's own database backends, with their connections lent by the process-wide broker.

Only the two hooks Django's backends document for opening and closing the underlying
connection change (`get_new_connection`, `_close`); everything else is Django's.
"""

from collections.abc import Hashable, Mapping
from operator import itemgetter
from typing import Any


def connection_key(vendor: str, params: Mapping[str, Any]) -> Hashable:
    """What makes two connections interchangeable: the vendor and every connection parameter."""
    return (vendor, *((name, _hashable(value)) for name, value in sorted(params.items(), key=itemgetter(0))))


def _hashable(value: Any) -> Hashable:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value
