"""Report sources read as streams of rows: a CSV upload, or a network's API.

Each yields `ReportRow`s (the report's own column names and values, and where in the
report it was), one at a time, so a report of any size is read in bounded memory. What
cannot be read is a ReportError whose message names the line or record, shown on the run.
"""

import codecs
import csv
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import IO, Any

import urllib3
from django.conf import settings

from infra.masking import MASK
from reconciliation.models import INVOLVE_ASIA_API, ReportSource

logger = logging.getLogger("conversions.reconciliation")

CSV_DELIMITERS = (",", ";")
# A CSV field may be long (an offer name), not unbounded.
CSV_FIELD_LIMIT = 65536
CSV_LINE_LIMIT = 1 << 20
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})


class ReportError(Exception):
    """A report that cannot be read; the message says where and why (never a credential)."""


@dataclass(frozen=True)
class ReportRow:
    """One row of a report: its values by the report's column names, and its place in it."""

    line: int  # the CSV line, or the API record's number (1-based)
    values: dict[str, Any]
    place: str = "line"  # what `line` counts: "line" (CSV) or "record" (API)


# --- CSV ---------------------------------------------------------------------------


def csv_report_rows(file: IO[bytes]) -> Iterator[ReportRow]:
    """The rows of a CSV report: UTF-8 with or without a BOM, comma or semicolon separated
    (told by the header line), quoted fields (with separators, quotes, line breaks).

    Raises ReportError naming the line of the first problem: not UTF-8, a row with more
    or fewer fields than the header, a broken quote, an empty or duplicate column name.
    """
    reader_lines = _lines_decoded(file)
    header_line = next(reader_lines, None)
    if header_line is None or not header_line.strip():
        raise ReportError("the file is empty: the first line must name the columns")
    delimiter = max(CSV_DELIMITERS, key=header_line.count)
    lines = _chain_first(header_line, reader_lines)
    reader = csv.reader(lines, delimiter=delimiter, quotechar='"', doublequote=True, strict=True)
    previous_limit = csv.field_size_limit()
    csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        header = [name.strip() for name in _next_row(reader)]
        _header_check(header)
        while True:
            try:
                fields = _next_row(reader)
            except StopIteration:
                return
            if not any(field.strip() for field in fields):
                continue  # a blank line
            if len(fields) != len(header):
                raise ReportError(
                    f"line {reader.line_num}: {len(fields)} fields where the header has {len(header)} "
                    f"(separator '{delimiter}'; quote fields that contain it)"
                )
            yield ReportRow(line=reader.line_num, values=dict(zip(header, fields, strict=True)))
    finally:
        csv.field_size_limit(previous_limit)


def _lines_decoded(file: IO[bytes]) -> Iterator[str]:
    """The file's lines as text, one at a time (a UTF-8 character never spans a line end)."""
    for number, raw in enumerate(iter(lambda: file.readline(CSV_LINE_LIMIT + 1), b""), start=1):
        if len(raw) > CSV_LINE_LIMIT:
            raise ReportError(f"line {number}: longer than {CSV_LINE_LIMIT} bytes")
        line = raw[len(codecs.BOM_UTF8) :] if number == 1 and raw.startswith(codecs.BOM_UTF8) else raw
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise ReportError(f"line {number}: not UTF-8 text (save the file as UTF-8)") from None
        if "\x00" in text:
            raise ReportError(f"line {number}: contains a NUL character (is it a text file?)")
        yield text


def _chain_first(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def _next_row(reader: Any) -> list[str]:
    try:
        return next(reader)
    except csv.Error as exc:
        raise ReportError(f"line {reader.line_num}: {exc}") from None


def _header_check(header: list[str]) -> None:
    seen = set()
    for position, name in enumerate(header, start=1):
        if not name:
            raise ReportError(f"line 1: column {position} has no name")
        if name in seen:
            raise ReportError(f"line 1: column '{name}' appears twice")
        seen.add(name)


# --- API ----------------------------------------------------------------------------


class _RateLimit:
    """At most `per_second` request starts per second for one source, across this process's threads."""

    _next_at: dict[int, float] = {}
    _lock = threading.Lock()

    @classmethod
    def wait(cls, source_id: int, per_second: float) -> None:
        interval = 1.0 / per_second
        with cls._lock:
            now = time.monotonic()
            start = max(now, cls._next_at.get(source_id, now))
            cls._next_at[source_id] = start + interval
        if start > now:
            time.sleep(start - now)


class ApiClient:
    """POSTs of form fields to a source's API: timeouts, retries with backoff, a rate limit.

    Retried: 429 (after its Retry-After, when it gives one) and 5xx answers, timeouts and
    dropped connections, up to RECONCILE_MAX_ATTEMPTS, waiting RECONCILE_BACKOFF_SECONDS
    doubled each time. The source's key and secret never appear in a message.
    """

    def __init__(self, source: ReportSource):
        self.source = source
        timeout = urllib3.Timeout(connect=source.timeout_seconds, read=source.timeout_seconds)
        self.pool = urllib3.PoolManager(timeout=timeout, retries=False, headers={"Accept": "application/json"})
        self.base_url = source.base_url.rstrip("/")
        self.requests = 0

    def post(self, path: str, fields: dict[str, str], token: str | None = None) -> tuple[int, Any]:
        """(HTTP status, the decoded JSON body or None) of the last attempt."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = f"{self.base_url}{path}"
        attempts = max(1, settings.RECONCILE_MAX_ATTEMPTS)
        for attempt in range(1, attempts + 1):
            _RateLimit.wait(self.source.pk or 0, self.source.requests_per_minute / 60)
            self.requests += 1
            retry_after = None
            try:
                response = self.pool.request("POST", url, fields=fields, headers=headers, encode_multipart=False)
            except (urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError) as exc:
                problem = "timed out" if isinstance(exc, urllib3.exceptions.TimeoutError) else "connection dropped"
            except urllib3.exceptions.HTTPError as exc:
                raise ReportError(f"{path}: cannot reach {self.base_url}: {self.masked(str(exc))}") from None
            else:
                if response.status not in RETRIED_STATUSES:
                    return response.status, _json(response.data)
                problem = f"HTTP {response.status}"
                retry_after = _seconds(response.headers.get("Retry-After"))
            if attempt == attempts:
                raise ReportError(f"{path}: {problem} on each of {attempts} attempts; try again later")
            delay = min(
                settings.RECONCILE_BACKOFF_MAX_SECONDS,
                retry_after if retry_after is not None else settings.RECONCILE_BACKOFF_SECONDS * 2 ** (attempt - 1),
            )
            logger.info("report source=%s %s %s: retrying in %.2fs", self.source.pk, path, problem, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def masked(self, text: str) -> str:
        for secret in (self.source.api_key, self.source.api_secret):
            if secret:
                text = text.replace(secret, MASK)
        return text


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def involve_asia_rows(*, source: ReportSource, date_from: date, date_to: date) -> Iterator[ReportRow]:
    """Every conversion record InvolveAsia's API has for the days (its own time zone
    handling; YYYY-MM-DD), page by page: `POST {base}/authenticate`, then
    `POST {base}/conversions/range` with the bearer token until `nextPage` is null.

    Raises ReportError for a failed authentication, an answer of the wrong shape, or a
    request that kept failing.
    """
    client = ApiClient(source)
    token = _involve_asia_token(client)
    fields = {
        "limit": str(source.page_size),
        "start_date": date_from.isoformat(),
        "end_date": date_to.isoformat(),
    }
    if source.preferred_currency:
        fields["filters[preferred_currency]"] = source.preferred_currency
    page, number, pages_read, reauthenticated = 1, 0, 0, False
    while page is not None:
        status, body = client.post("/conversions/range", {**fields, "page": str(page)}, token=token)
        if status == 401 and not reauthenticated:
            token, reauthenticated = _involve_asia_token(client), True  # the token expired mid-run
            continue
        if status != 200:
            raise ReportError(f"/conversions/range page {page}: HTTP {status}: {_message(client, body)}")
        data = body.get("data") if isinstance(body, dict) else None
        records = data.get("data") if isinstance(data, dict) else None
        if not isinstance(records, list):
            raise ReportError(f"/conversions/range page {page}: the answer has no data.data list of records")
        for record in records:
            number += 1
            if not isinstance(record, dict):
                raise ReportError(f"record {number} (page {page}) is not an object")
            yield ReportRow(line=number, values=record, place="record")
        pages_read += 1
        next_page = data.get("nextPage")
        if next_page in (None, "", 0) or not records:
            break
        if not isinstance(next_page, int) or next_page <= page:
            raise ReportError(f"/conversions/range page {page}: nextPage {next_page!r} does not move forward")
        total = data.get("count")
        if isinstance(total, int) and pages_read > total // max(1, source.page_size) + 1:
            raise ReportError(f"/conversions/range: more pages than its count of {total} records needs")
        page = next_page
    logger.info("report source=%s: %d records in %d requests", source.pk, number, client.requests)


def _involve_asia_token(client: ApiClient) -> str:
    source = client.source
    if not source.has_credentials:
        raise ReportError("authentication failed: the source has no API key and secret; set them in the admin")
    status, body = client.post("/authenticate", {"key": source.api_key, "secret": source.api_secret})
    data = body.get("data") if isinstance(body, dict) else None
    token = data.get("token") if isinstance(data, dict) else None
    if status != 200 or not isinstance(token, str) or not token:
        raise ReportError(f"authentication failed: HTTP {status}: {_message(client, body)}")
    return token


def _message(client: ApiClient, body: Any) -> str:
    message = body.get("message") if isinstance(body, dict) else None
    text = str(message) if message else "no message"
    return client.masked(text)[:200]


def source_report_rows(
    *, source: ReportSource, date_from: date, date_to: date, upload: IO[bytes] | None = None
) -> Iterator[ReportRow]:
    """The source's report for the days: the uploaded CSV, or its API's records."""
    if source.kind == INVOLVE_ASIA_API:
        return involve_asia_rows(source=source, date_from=date_from, date_to=date_to)
    if upload is None:
        raise ReportError("a CSV source needs an uploaded file")
    return csv_report_rows(upload)
