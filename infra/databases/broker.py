"""One process's database connections: a bounded set shared by every thread.

A Django connection object belongs to one thread and one alias; the raw DB-API
connection behind it is borrowed from this broker when the Django connection opens
and given back when it closes (at the end of every request: partner aliases run with
CONN_MAX_AGE 0). The broker keeps at most DB_MAX_CONNECTIONS raw connections in the
process, whatever the number of partner databases, in use and idle together: an idle
connection to the same database is reused; when the limit is reached the least
recently used idle connection is closed to make room; idle connections are closed
after DB_IDLE_SECONDS and every connection after DB_CONN_MAX_AGE.

A process therefore never holds more than DB_MAX_CONNECTIONS connections, and an
instance never more than WEB_CONCURRENCY x DB_MAX_CONNECTIONS.
"""

import logging
import os
import threading
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import OperationalError

logger = logging.getLogger("partners.databases.broker")

# An idle connection unused for longer than this is checked before it is lent again.
CHECK_AFTER_IDLE_SECONDS = 1.0
SWEEP_SECONDS = 1.0


class ConnectionsExhausted(OperationalError):
    """Every connection of the process is in use and none came back in time."""


@dataclass(eq=False)
class _Entry:
    key: Hashable
    alias: str
    raw: Any
    opened_at: float
    released_at: float = 0.0
    retired: bool = False
    owner: weakref.ref | None = None  # the thread it is lent to


@dataclass(frozen=True)
class BrokerStats:
    """A snapshot of the process's connections."""

    limit: int
    open: int
    in_use: int
    idle: int
    peak: int
    by_alias: dict[str, int] = field(default_factory=dict)


class ConnectionBroker:
    """The process-wide, bounded set of raw database connections (see the module doc)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._idle: OrderedDict[int, _Entry] = OrderedDict()  # least recently released first
        self._in_use: dict[int, _Entry] = {}
        self._open_by_key: Counter = Counter()
        self._peak = 0
        self._listeners: list[Callable[[str, str], None]] = []
        self._sweeper: threading.Thread | None = None
        self._pid = os.getpid()

    # --- configuration, read at use so that tests and settings overrides apply --------

    @staticmethod
    def limit() -> int:
        return max(1, settings.DB_MAX_CONNECTIONS)

    @staticmethod
    def _per_key_limit() -> int:
        return settings.DB_POOL_MAX_SIZE or 0

    # --- lending ----------------------------------------------------------------------

    def acquire(self, *, key: Hashable, alias: str, connect: Callable[[], Any], check: Callable[[Any], bool]) -> Any:
        """A raw connection for `key`: an idle one, or a new one from `connect()`.

        `check(raw)` tells whether an idle connection still works (it is asked only
        after CHECK_AFTER_IDLE_SECONDS of idleness). Waits at most DB_CONNECT_TIMEOUT
        for a connection to come back when the process's limit is reached and every
        connection is in use; raises ConnectionsExhausted then.
        """
        self._ensure_sweeper()
        deadline = time.monotonic() + settings.DB_CONNECT_TIMEOUT
        while True:
            evicted: list[_Entry] = []  # the place of the first one is this new connection's
            reused = None
            with self._cond:
                while True:
                    reused = self._take_idle(key)
                    if reused is not None:
                        break
                    if self._room_for(key, evicted):
                        self._open_by_key[key] += 1
                        total = sum(self._open_by_key.values())
                        self._peak = max(self._peak, total)
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise ConnectionsExhausted(
                            f"all {self.limit()} database connections of this process are in use "
                            f"(DB_MAX_CONNECTIONS); none came back within {settings.DB_CONNECT_TIMEOUT} s"
                        )
                    self._cond.wait(remaining)
            for index, entry in enumerate(evicted):
                if index == 0:
                    self._close(entry, "evicted")
                else:
                    self._forget(entry, "evicted")
            if reused is not None:
                if time.monotonic() - reused.released_at < CHECK_AFTER_IDLE_SECONDS or check(reused.raw):
                    reused.alias = alias
                    reused.owner = weakref.ref(threading.current_thread())
                    with self._cond:
                        self._in_use[id(reused.raw)] = reused
                    return reused.raw
                self._forget(reused, "broken")
                continue  # try again: another idle one, or a new one
            try:
                raw = connect()
            except BaseException:
                with self._cond:
                    self._open_by_key[key] -= 1
                    self._cond.notify()
                raise
            entry = _Entry(
                key=key, alias=alias, raw=raw, opened_at=time.monotonic(), owner=weakref.ref(threading.current_thread())
            )
            with self._cond:
                self._in_use[id(raw)] = entry
            self._notify("opened", alias)
            return raw

    def release(self, raw: Any, *, reusable: bool) -> None:
        """Take back a connection lent by acquire(); close it unless it can be lent again."""
        with self._cond:
            entry = self._in_use.pop(id(raw), None)
            if entry is None:
                unknown = True
            else:
                unknown = False
                too_old = time.monotonic() - entry.opened_at >= settings.DB_CONN_MAX_AGE
                keep = reusable and not entry.retired and not too_old and settings.DB_IDLE_SECONDS > 0
                if keep:
                    entry.released_at = time.monotonic()
                    self._idle[id(raw)] = entry
                    self._cond.notify()
                    return
        if unknown:
            # Not ours (made before this process forked, or by a test): just close it.
            _close_quietly(raw)
            return
        self._forget(entry, "retired" if entry.retired else "closed")

    def retire(self, alias: str) -> None:
        """Close the idle connections last used for `alias` now, and the others when they
        come back (its settings changed: they point at the old database)."""
        with self._cond:
            stale = [entry for entry in self._idle.values() if entry.alias == alias]
            for entry in stale:
                del self._idle[id(entry.raw)]
            for entry in self._in_use.values():
                if entry.alias == alias:
                    entry.retired = True
        for entry in stale:
            self._forget(entry, "retired")

    def close_idle(self) -> int:
        """Close every idle connection; return how many."""
        with self._cond:
            idle = list(self._idle.values())
            self._idle.clear()
        for entry in idle:
            self._forget(entry, "closed")
        return len(idle)

    def stats(self) -> BrokerStats:
        with self._cond:
            by_alias = Counter(entry.alias for entry in (*self._idle.values(), *self._in_use.values()))
            in_use, idle = len(self._in_use), len(self._idle)
            return BrokerStats(
                limit=self.limit(),
                open=sum(self._open_by_key.values()),
                in_use=in_use,
                idle=idle,
                peak=self._peak,
                by_alias=dict(by_alias),
            )

    def listen(self, listener: Callable[[str, str], None]) -> None:
        """Call `listener(event, alias)` when a connection is opened or closed (`closed:<why>`)."""
        self._listeners.append(listener)

    # --- internals (call with the lock held where noted) --------------------------------

    def _take_idle(self, key: Hashable) -> _Entry | None:
        # Locked. The most recently released connection of `key`: the others stay idle
        # long enough to be closed by the sweeper when traffic drops.
        for entry_id in reversed(self._idle):
            entry = self._idle[entry_id]
            if entry.key == key:
                del self._idle[entry_id]
                return entry
        return None

    def _room_for(self, key: Hashable, evicted: list[_Entry]) -> bool:
        # Locked. Room for one more connection of `key`, closing idle ones to make it.
        per_key = self._per_key_limit()
        if per_key and self._open_by_key[key] >= per_key:
            return self._evict(lambda entry: entry.key == key, evicted)
        if sum(self._open_by_key.values()) < self.limit():
            return True
        return self._evict(lambda entry: True, evicted) or self._reclaim_abandoned(evicted)

    def _reclaim_abandoned(self, evicted: list[_Entry]) -> bool:
        # Locked. Connections lent to threads that ended without giving them back
        # (a thread outside any request that never closed its connections) are taken
        # back, so they cannot shrink the process's limit for good. Only the first one's
        # place goes to the caller now; the others keep theirs until the caller has closed
        # them (_forget), or another thread could open one while they are still open.
        abandoned = [entry for entry in self._in_use.values() if not _alive(entry.owner)]
        for entry in abandoned:
            del self._in_use[id(entry.raw)]
        if abandoned:
            self._open_by_key[abandoned[0].key] -= 1
        evicted.extend(abandoned)
        return bool(abandoned)

    def _evict(self, matches: Callable[[_Entry], bool], evicted: list[_Entry]) -> bool:
        # Locked. Forget the least recently used idle connection that matches (closed by the caller).
        for entry_id, entry in self._idle.items():
            if matches(entry):
                del self._idle[entry_id]
                self._open_by_key[entry.key] -= 1
                evicted.append(entry)
                return True
        return False

    def _forget(self, entry: _Entry, why: str) -> None:
        # Closed before its place is given up, so the process never has one too many open.
        self._close(entry, why)
        with self._cond:
            self._open_by_key[entry.key] -= 1
            if self._open_by_key[entry.key] <= 0:
                del self._open_by_key[entry.key]
            self._cond.notify()

    def _close(self, entry: _Entry, why: str) -> None:
        _close_quietly(entry.raw)
        self._notify(f"closed:{why}", entry.alias)

    def _notify(self, event: str, alias: str) -> None:
        for listener in self._listeners:
            try:
                listener(event, alias)
            except Exception:  # metrics must never break a request
                logger.exception("connection listener failed")

    def sweep(self) -> None:
        """Close idle connections past DB_IDLE_SECONDS and connections past DB_CONN_MAX_AGE."""
        now = time.monotonic()
        idle_limit, age_limit = settings.DB_IDLE_SECONDS, settings.DB_CONN_MAX_AGE
        with self._cond:
            expired = [
                entry
                for entry in self._idle.values()
                if now - entry.released_at >= idle_limit or now - entry.opened_at >= age_limit
            ]
            for entry in expired:
                del self._idle[id(entry.raw)]
        for entry in expired:
            self._forget(entry, "idle")

    def _ensure_sweeper(self) -> None:
        if self._sweeper is not None and self._pid == os.getpid():
            return
        with self._cond:
            if self._sweeper is not None and self._pid == os.getpid():
                return
            self._sweeper = threading.Thread(target=self._sweep_forever, name="db-connection-sweeper", daemon=True)
            self._sweeper.start()

    def _sweep_forever(self) -> None:
        while True:
            time.sleep(SWEEP_SECONDS)
            try:
                self.sweep()
                self._notify("tick", "")
            except Exception:
                logger.exception("closing idle database connections failed")

    def _after_fork(self) -> None:
        # The child shares the parent's sockets: forget them without closing them
        # (closing would end the parent's sessions too).
        self._cond = threading.Condition(threading.Lock())
        self._idle = OrderedDict()
        self._in_use = {}
        self._open_by_key = Counter()
        self._peak = 0
        self._sweeper = None
        self._pid = os.getpid()


def _alive(owner: weakref.ref | None) -> bool:
    thread = owner() if owner is not None else None
    return thread is not None and thread.is_alive()


def _close_quietly(raw: Any) -> None:
    try:
        raw.close()
    except Exception:  # a connection that cannot even close cleanly is gone anyway
        logger.debug("closing a database connection failed", exc_info=True)


connection_broker = ConnectionBroker()
os.register_at_fork(after_in_child=connection_broker._after_fork)
