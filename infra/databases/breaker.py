"""Bulkheads and breakers: one sick partner database cannot take the others down.

Per process and per partner storage: a database (host, port, name), or a schema of a
shared database (a partner whose tables are locked trips its own breaker, not its
neighbours'; a whole shared database that hangs is met by each partner's guard in turn):

- **Bulkhead.** At most DB_MAX_THREADS_PER_DATABASE threads work on one database at
  once. A request beyond that waits for a free slot while the database is answering
  (its slots come back within milliseconds), at most DB_BUSY_WAIT_SECONDS, and is
  refused at once when the oldest request on it has been waiting longer than that:
  a database that hangs holds that many threads, never all of them.
- **Breaker.** After a connection failure or a timeout the database's requests are
  refused at once for DB_BREAKER_SECONDS; then one request (the probe) is let through
  while the others are still refused; its success closes the breaker, its failure
  opens it again.

Refusals raise PartnerDatabaseUnavailable, which the postback answers with 503 and
Retry-After.
"""

import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass

from django.conf import settings
from django.db import connections

from infra.errors import error_first_line
from infra.state import process_state_register


class PartnerDatabaseUnavailable(Exception):
    """A partner database cannot be reached, is not provisioned, or is refusing work."""

    def __init__(self, alias: str, reason: str):
        super().__init__(f"database '{alias}': {reason}")
        self.alias = alias
        self.reason = reason


class ConfigurationUnavailable(PartnerDatabaseUnavailable):
    """The configuration database (`default`) failed during work in a partner's database
    (e.g. the publishers, read on first use): the work is refused and can be retried, and
    the partner database's breaker is not told, since that database did nothing wrong."""

    def __init__(self, error: BaseException):
        super().__init__("default", error_first_line(error))


@dataclass
class Ticket:
    """One admitted request on a guarded database."""

    started: float
    probe: bool


class DatabaseGuard:
    """The bulkhead and breaker of one database in this process (see the module doc)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._working: dict[int, Ticket] = {}
        self._open_until = 0.0
        self._reason = ""
        self._probing = False

    def admit(self, alias: str) -> Ticket:
        """Admit one request, or raise PartnerDatabaseUnavailable at once (or after at most
        DB_BUSY_WAIT_SECONDS while the database is answering)."""
        limit = max(1, settings.DB_MAX_THREADS_PER_DATABASE)
        wait = settings.DB_BUSY_WAIT_SECONDS
        with self._cond:
            now = time.monotonic()
            probe = False
            if self._open_until:
                if now < self._open_until or self._probing:
                    raise PartnerDatabaseUnavailable(alias, f"failing, not retried for a few seconds: {self._reason}")
                self._probing = probe = True
            deadline = now + wait
            while len(self._working) >= limit:
                oldest = min(ticket.started for ticket in self._working.values())
                if now - oldest >= wait or now >= deadline:
                    if probe:
                        self._probing = False
                    raise PartnerDatabaseUnavailable(
                        alias, f"busy: {len(self._working)} requests of this process are waiting on it"
                    )
                self._cond.wait(min(deadline, oldest + wait) - now)
                now = time.monotonic()
            ticket = Ticket(started=now, probe=probe)
            self._working[id(ticket)] = ticket
            return ticket

    def release(self, ticket: Ticket, *, failure: str | None = None, concluded: bool = True) -> None:
        """The request is done with the database; `failure` when the database did not answer;
        not `concluded` when it stopped before it could tell (the breaker stays as it was)."""
        with self._cond:
            self._working.pop(id(ticket), None)
            if concluded and failure is not None and settings.DB_BREAKER_SECONDS > 0:
                self._open_until = time.monotonic() + settings.DB_BREAKER_SECONDS
                self._reason = failure
            elif concluded and (ticket.probe or (failure is None and self._open_until and not self._probing)):
                self._open_until = 0.0
            if ticket.probe:
                self._probing = False
            self._cond.notify()

    @property
    def is_open(self) -> bool:
        return bool(self._open_until)


_guards: dict[Hashable, DatabaseGuard] = {}
_guards_lock = threading.Lock()


def database_guard(alias: str) -> DatabaseGuard:
    """The guard of the storage `alias` points at now (a re-pointed alias gets a fresh one).

    One per database, or per schema of a shared database: a partner whose tables are
    locked or slow opens its own breaker, not its neighbours'.
    """
    config = connections.settings[alias]
    key = (config["ENGINE"], config.get("HOST"), config.get("PORT"), config["NAME"], config.get("SCHEMA", ""))
    guard = _guards.get(key)
    if guard is None:
        with _guards_lock:
            guard = _guards.setdefault(key, DatabaseGuard())
    return guard


def guards_reset() -> None:
    """Forget every guard's state (tests)."""
    with _guards_lock:
        _guards.clear()


process_state_register("infra.database_breakers", guards_reset)
