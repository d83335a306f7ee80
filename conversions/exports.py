"""The one CSV export of conversions: the API's `?format=csv` and the admin's action.

Both write the API's documented columns (the stored conversion's, as the JSON list shows
them, plus `outcome`; raw parameters, headers and the sender's address stay out), spell
values the same way (datetimes ISO 8601 in UTC, booleans `true`/`false`, empty for null)
and prefix with `'` every cell a spreadsheet would run as a formula, since partners
control the text. Rows are read in keyset batches and written as they come, so memory
stays flat however many rows are exported.
"""

import csv
import datetime
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from django.db import DatabaseError
from django.db.models import BooleanField, CharField, QuerySet, TextField
from django.http import StreamingHttpResponse

from conversions.models import PartnerConversion, row_kind
from conversions.selectors import (
    CONVERSION_ATTNAMES,
    CONVERSION_COLUMNS,
    CONVERSION_FIELDS,
    Cursor,
    conversion_export_rows,
)
from partners.models import Partner

logger = logging.getLogger("conversions.exports")

EXPORT_COLUMNS = (*CONVERSION_COLUMNS, "outcome")
# Spreadsheets run a cell starting with one of these as a formula (=HYPERLINK(...), +1+1, @SUM).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
EXPORT_BATCH_SIZE = 5000
LINES_PER_CHUNK = 500

_BOOLEAN_INDEXES = tuple(i for i, field in enumerate(CONVERSION_FIELDS) if isinstance(field, BooleanField))
_TEXT_INDEXES = tuple(i for i, field in enumerate(CONVERSION_FIELDS) if isinstance(field, CharField | TextField))
_DUPLICATE_INDEX = CONVERSION_ATTNAMES.index("is_duplicate")
_ERROR_INDEX = CONVERSION_ATTNAMES.index("processing_error")


class _Line:
    """A file-like object whose write() hands the line back to the generator."""

    def write(self, value: str) -> str:
        return value


def csv_text_cell(value: str | None) -> str | None:
    """The text as a spreadsheet must show it: a would-be formula prefixed with `'`."""
    if value and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def conversion_csv_lines(rows: Iterable[tuple[Any, ...]]) -> Iterator[str]:
    """The header, then one CSV line per row of CONVERSION_ATTNAMES (datetimes as ISO text), in chunks."""
    writer = csv.writer(_Line())
    chunk = [writer.writerow(EXPORT_COLUMNS)]
    try:
        for values in rows:
            row = list(values)
            for index in _BOOLEAN_INDEXES:
                row[index] = "true" if row[index] else "false"
            for index in _TEXT_INDEXES:
                row[index] = csv_text_cell(row[index])
            row.append(row_kind(is_duplicate=values[_DUPLICATE_INDEX], processing_error=values[_ERROR_INDEX]))
            chunk.append(writer.writerow(row))
            if len(chunk) >= LINES_PER_CHUNK:
                yield "".join(chunk)
                chunk = []
    except DatabaseError:
        # The 200 is sent already: re-raising aborts the body (no final chunk), so the
        # client sees a broken download instead of a silently short file.
        logger.exception("CSV export interrupted by the database")
        raise
    yield "".join(chunk)


def csv_cell(value: Any) -> Any:
    """A value spelled as the conversions export spells it (for other tables' exports)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).isoformat()
    if isinstance(value, str):
        return csv_text_cell(value)
    return value


def csv_lines(columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Iterator[str]:
    """The header, then one CSV line per row of values, spelled like the conversions export, in chunks."""
    writer = csv.writer(_Line())
    chunk = [writer.writerow(list(columns))]
    for values in rows:
        chunk.append(writer.writerow([csv_cell(value) for value in values]))
        if len(chunk) >= LINES_PER_CHUNK:
            yield "".join(chunk)
            chunk = []
    yield "".join(chunk)


def conversion_csv_response(
    queryset: QuerySet[PartnerConversion],
    *,
    partner: Partner,
    after: Cursor | None = None,
    limit: int | None = None,
) -> StreamingHttpResponse:
    """A streamed `<partner_code>-conversions.csv` of `queryset`, newest first."""
    rows = conversion_export_rows(queryset=queryset, after=after, limit=limit, batch_size=EXPORT_BATCH_SIZE)
    response = StreamingHttpResponse(conversion_csv_lines(rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{partner.partner_code}-conversions.csv"'
    return response
