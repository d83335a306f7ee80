"""A request's connections, visited at its start and end: only those its thread holds.

Django closes obsolete connections and clears query logs at the start and end of every
request by visiting every configured alias (`close_old_connections`, `reset_queries`
on `request_started` / `request_finished`). Every partner is an alias, so with 300
partners that visit costs about 1.4 ms per request, more than the postback itself. The
brokered backends know which connections a thread holds (held_add / held_discard), so
the same work is done on those only.

The replacements listen to requests of the WSGI handler only: the test client keeps
Django's own handlers, which it disconnects and reconnects around its requests.
(Checked against Django 5.2: the receivers are connected in django/db/__init__.py.)

For the same reason each request's view is wrapped for ATOMIC_REQUESTS only when
`default` asks for it: Django looks through every alias's settings for it (0.7 ms a
request with 1,000 partners), and partner aliases never set it (config.py).
"""

import threading
from typing import Any

from django.core.handlers.base import BaseHandler
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import DEFAULT_DB_ALIAS, close_old_connections, connections, reset_queries

_held = threading.local()


def held_add(connection: Any) -> None:
    """A brokered Django connection of this thread opened."""
    held = getattr(_held, "connections", None)
    if held is None:
        held = _held.connections = set()
    held.add(connection)


def held_discard(connection: Any) -> None:
    """...and closed."""
    held = getattr(_held, "connections", None)
    if held is not None:
        held.discard(connection)


def _at_request_start(**kwargs: Any) -> None:
    for connection in list(getattr(_held, "connections", ())):
        connection.queries_log.clear()
        connection.close_if_unusable_or_obsolete()


def _at_request_end(**kwargs: Any) -> None:
    for connection in list(getattr(_held, "connections", ())):
        connection.close_if_unusable_or_obsolete()


_django_make_view_atomic = BaseHandler.make_view_atomic


def _make_view_atomic(self: BaseHandler, view: Any) -> Any:
    if connections.settings[DEFAULT_DB_ALIAS]["ATOMIC_REQUESTS"]:
        return _django_make_view_atomic(self, view)
    return view


def request_edges_install() -> None:
    """Replace Django's per-request visit of every alias with a visit of the held ones."""
    BaseHandler.make_view_atomic = _make_view_atomic
    request_started.disconnect(reset_queries)
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    request_started.connect(_at_request_start, sender=WSGIHandler, dispatch_uid="partners.request_start")
    request_finished.connect(_at_request_end, sender=WSGIHandler, dispatch_uid="partners.request_end")
