"""System check of the delivery worker's settings: a live worker's lease must outlast its batch.

A worker claims DELIVERY_BATCH_SIZE deliveries and sends DELIVERY_CONCURRENCY at a time,
so the last wave of a batch starts after the waves before it; each send may take up to
the connect and read timeouts. A lease shorter than that could expire while its worker
is still sending: another worker would claim the delivery and both would send it.
"""

import math

from django.conf import settings
from django.core import checks


def delivery_batch_seconds() -> float:
    """The longest a claimed batch may take to send: waves × the longest a send may take."""
    waves = math.ceil(settings.DELIVERY_BATCH_SIZE / max(1, settings.DELIVERY_CONCURRENCY))
    return waves * (settings.DELIVERY_CONNECT_TIMEOUT + settings.DELIVERY_READ_TIMEOUT)


@checks.register()
def delivery_lease_check(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    longest = delivery_batch_seconds()
    if longest < settings.DELIVERY_LEASE_SECONDS:
        return []
    return [
        checks.Warning(
            f"DELIVERY_LEASE_SECONDS ({settings.DELIVERY_LEASE_SECONDS:g}) is not longer than a batch may take "
            f"to send ({longest:g} s: DELIVERY_BATCH_SIZE / DELIVERY_CONCURRENCY waves × (DELIVERY_CONNECT_TIMEOUT"
            " + DELIVERY_READ_TIMEOUT)): a live worker's deliveries could be claimed and sent again by another.",
            hint="Raise DELIVERY_LEASE_SECONDS, or lower DELIVERY_BATCH_SIZE or the timeouts.",
            id="publishers.W001",
        )
    ]
