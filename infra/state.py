"""What a process keeps between requests: caches, ledgers, breakers, registered in one place.

Each module that keeps such state registers how to forget it, next to where it defines
it; `process_state_reset()` forgets all of it at once (the test suite does between tests,
so no test sees what another left). Registrations (hooks, routers, admin extensions) are
configuration made at start-up, not state: they are not registered here.
"""

from collections.abc import Callable

_resets: dict[str, Callable[[], None]] = {}


def process_state_register(name: str, reset: Callable[[], None]) -> None:
    """Declare state named `name` (e.g. "partners.partner_directory"), forgotten by `reset()`."""
    _resets[name] = reset


def process_state_reset() -> None:
    """Forget every registered state of this process."""
    for reset in list(_resets.values()):
        reset()


def process_state_names() -> list[str]:
    """The names of the registered state, sorted."""
    return sorted(_resets)
