"""Reads of reconciliation runs."""

from collections.abc import Iterator
from typing import Any

from django.db.models import Q

from reconciliation.models import ReconciliationRow

EXPORT_BATCH_SIZE = 5000
RUN_EXPORT_COLUMNS = (
    "conversion_id",
    "kind",
    "differences",
    "conversion_datetime",
    "status",
    "usd_sale_amount",
    "usd_earning",
    "currency",
    "report_line",
    "action",
    "conversion_pk",
)


def run_rows_export(*, alias: str, run_id: int) -> Iterator[tuple[Any, ...]]:
    """A run's rows as RUN_EXPORT_COLUMNS, discrepancies first, read in keyset batches
    (memory stays flat however many rows the run has)."""
    rows = ReconciliationRow.objects.using(alias).filter(run_id=run_id).order_by("rank", "id")
    after: tuple[int, int] | None = None
    while True:
        batch = rows if after is None else rows.filter(Q(rank__gt=after[0]) | Q(rank=after[0], id__gt=after[1]))
        found = list(batch.values_list("rank", "id", *RUN_EXPORT_COLUMNS)[:EXPORT_BATCH_SIZE])
        if not found:
            return
        for rank, pk, *values in found:
            differences = values[2]
            values[2] = "; ".join(f"{name}: {ours} -> {theirs}" for name, (ours, theirs) in differences.items())
            yield tuple(values)
            after = (rank, pk)
