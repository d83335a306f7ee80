"""The exports of conversions: the one CSV (the API's `?format=csv` and the admin's action)
and the admin's XLSX, with the same columns.

Columns: the partner (`partner_code`, `partner_name`: a file read outside the admin still
says whose rows these are), then the stored conversion's as the JSON list shows them,
then `outcome`. Raw parameters, headers, the sender's address and the internal request
digests stay out. Rows are read in keyset batches.

CSV spells values the same way everywhere (datetimes ISO 8601 in UTC, booleans
`true`/`false`, empty for null) and prefixes with `'` every cell a spreadsheet would run
as a formula, since partners control the text; it is streamed as it is written, so memory
stays flat however many rows are exported. XLSX cells are typed instead: numbers are
numbers, datetimes are datetimes (UTC), text is a string cell, which a spreadsheet never
runs, so it needs (and gets) no `'`.
"""

import csv
import datetime
import logging
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

from django.db import DatabaseError
from django.db.models import BooleanField, CharField, QuerySet, TextField
from django.http import FileResponse, StreamingHttpResponse
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Font

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

# Internal bookkeeping of the ingest (which requests an original has seen), not data.
NOT_EXPORTED = frozenset({"request_digests"})
PARTNER_COLUMNS = ("partner_code", "partner_name")
# Positions, in the rows conversion_export_rows yields, of the columns exported.
_KEPT = tuple(i for i, name in enumerate(CONVERSION_COLUMNS) if name not in NOT_EXPORTED)
_FIELDS = tuple(CONVERSION_FIELDS[i] for i in _KEPT)
EXPORT_COLUMNS = (*PARTNER_COLUMNS, *(CONVERSION_COLUMNS[i] for i in _KEPT), "outcome")
# Spreadsheets run a cell starting with one of these as a formula (=HYPERLINK(...), +1+1, @SUM).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
EXPORT_BATCH_SIZE = 5000
LINES_PER_CHUNK = 500
# A sheet holds 1,048,576 rows, the header included; a bigger export is CSV's.
XLSX_MAX_ROWS = 1_048_575
XLSX_MAX_TEXT = 32_767  # characters a cell holds
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

# Positions within the exported conversion columns (after _KEPT).
_BOOLEAN_INDEXES = tuple(i for i, field in enumerate(_FIELDS) if isinstance(field, BooleanField))
_TEXT_INDEXES = tuple(i for i, field in enumerate(_FIELDS) if isinstance(field, CharField | TextField))
_DATETIME_INDEXES = tuple(i for i, field in enumerate(_FIELDS) if field.get_internal_type() == "DateTimeField")
_DUPLICATE_INDEX = CONVERSION_ATTNAMES.index("is_duplicate")
_ERROR_INDEX = CONVERSION_ATTNAMES.index("processing_error")


class XlsxTooLarge(ValueError):
    """More rows than a sheet holds."""


class _Line:
    """A file-like object whose write() hands the line back to the generator."""

    def write(self, value: str) -> str:
        return value


def csv_text_cell(value: str | None) -> str | None:
    """The text as a spreadsheet must show it: a would-be formula prefixed with `'`."""
    if value and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def _export_row(values: tuple[Any, ...]) -> list[Any]:
    """The exported conversion columns of one row of CONVERSION_ATTNAMES, then its outcome."""
    row = [values[i] for i in _KEPT]
    row.append(row_kind(is_duplicate=values[_DUPLICATE_INDEX], processing_error=values[_ERROR_INDEX]).value)
    return row


def conversion_csv_lines(rows: Iterable[tuple[Any, ...]], *, partner: Partner) -> Iterator[str]:
    """The header, then one CSV line per row of CONVERSION_ATTNAMES (datetimes as ISO text), in chunks."""
    writer = csv.writer(_Line())
    chunk = [writer.writerow(EXPORT_COLUMNS)]
    partner_cells = [csv_text_cell(partner.partner_code), csv_text_cell(partner.partner_name)]
    try:
        for values in rows:
            row = _export_row(values)
            for index in _BOOLEAN_INDEXES:
                row[index] = "true" if row[index] else "false"
            for index in _TEXT_INDEXES:
                row[index] = csv_text_cell(row[index])
            chunk.append(writer.writerow([*partner_cells, *row]))
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
    response = StreamingHttpResponse(
        conversion_csv_lines(rows, partner=partner), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{partner.partner_code}-conversions.csv"'
    return response


def xlsx_text_cell(sheet, value: str) -> Any:
    """Text as a string cell (the text, or a WriteOnlyCell typed as one): never a formula
    (openpyxl would store `=...` as one), without the control characters XML cannot carry,
    and cut at what a cell holds."""
    value = ILLEGAL_CHARACTERS_RE.sub("\ufffd", value)[:XLSX_MAX_TEXT]
    if not value.startswith("="):
        return value
    cell = WriteOnlyCell(sheet, value=value)
    cell.data_type = "s"
    return cell


def conversion_xlsx_response(queryset: QuerySet[PartnerConversion], *, partner: Partner) -> FileResponse:
    """`<partner_code>-conversions.xlsx` of `queryset`, newest first, with the CSV's columns as
    typed cells (datetimes in UTC). Raises XlsxTooLarge beyond XLSX_MAX_ROWS rows."""
    workbook = Workbook(write_only=True)  # rows go to a temporary file, not memory
    sheet = workbook.create_sheet("conversions")
    header = []
    for name in EXPORT_COLUMNS:
        cell = WriteOnlyCell(sheet, value=name)
        cell.font = Font(bold=True)
        header.append(cell)
    sheet.append(header)
    partner_cells = [xlsx_text_cell(sheet, partner.partner_code), xlsx_text_cell(sheet, partner.partner_name)]
    rows = conversion_export_rows(queryset=queryset, limit=XLSX_MAX_ROWS + 1, batch_size=EXPORT_BATCH_SIZE)
    for count, values in enumerate(rows, 1):
        if count > XLSX_MAX_ROWS:
            sheet.close()  # ends its temporary file now, not whenever it is collected
            raise XlsxTooLarge(f"more than {XLSX_MAX_ROWS:,} rows: a sheet cannot hold them, export them as CSV")
        row = _export_row(values)
        for index in _DATETIME_INDEXES:
            if row[index] is not None:  # ISO text in UTC; a sheet's datetimes have no zone
                row[index] = datetime.datetime.fromisoformat(row[index]).replace(tzinfo=None)
        for index, value in enumerate(row):
            if isinstance(value, str):
                row[index] = xlsx_text_cell(sheet, value)
        sheet.append([*partner_cells, *row])
    output = tempfile.TemporaryFile()  # noqa: SIM115 (FileResponse closes it once sent)
    workbook.save(output)
    output.seek(0)
    return FileResponse(
        output, as_attachment=True, filename=f"{partner.partner_code}-conversions.xlsx", content_type=XLSX_TYPE
    )
