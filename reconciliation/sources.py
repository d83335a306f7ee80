"""Report sources read as streams of rows: a CSV upload, or a network's API.

Each yields `ReportRow`s (the report's own column names and values, and where in the
report it was), one at a time, so a report of any size is read in bounded memory. What
cannot be read is a ReportError whose message names the line or record, shown on the run.
What the rows mean (the network's format, its days and time zone) is formats.py's.

An API is asked no more than its account allows: every request, authentication included,
waits for room in the account's sliding minute (shared by this process's threads), and a
429 stops the whole account until its window has room again. The time all of this goes by
is a Clock, so tests read hours of a rate-limited API in virtual time.
"""

import codecs
import csv
import hashlib
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
from infra.state import process_state_register
from reconciliation.models import API_PAGE_SIZE_MAX, API_REQUESTS_PER_MINUTE, ReportSource

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
    page: int = 0  # the API page it came on (0: a CSV)


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
    # The csv module's own field limit is process-wide (csv.field_size_limit): left as it
    # is; each field is measured here instead.
    reader = csv.reader(lines, delimiter=delimiter, quotechar='"', doublequote=True, strict=True)
    header = [name.strip() for name in _next_row(reader)]
    _header_check(header)
    _fields_check(header, reader.line_num)
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
        _fields_check(fields, reader.line_num)
        yield ReportRow(line=reader.line_num, values=dict(zip(header, fields, strict=True)))


def _fields_check(fields: list[str], line: int) -> None:
    for position, field in enumerate(fields, start=1):
        if len(field) > CSV_FIELD_LIMIT:
            raise ReportError(f"line {line}: field {position} is longer than {CSV_FIELD_LIMIT} characters")


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

# A network counts an account's requests over a sliding minute.
WINDOW_SECONDS = 60.0
# InvolveAsia's tokens are valid two hours; one is renewed this long before it expires.
TOKEN_LIFETIME_SECONDS = 2 * 3600.0
TOKEN_RENEW_BEFORE_SECONDS = 10 * 60.0
# How often a thread waiting for room looks again while the requests that fill the
# window are still in flight (their answer starts their last minute in the window).
IN_FLIGHT_POLL_SECONDS = 0.05
# A preview (a person waiting on a page) waits no longer than this for room in the minute.
PREVIEW_WAIT_SECONDS = 5.0


class Clock:
    """The time the API client and its rate limit go by: monotonic seconds, and waiting.

    Runs use the real one (API_CLOCK); a test passes a virtual one whose `sleep` only moves
    its time on, shared with the fake network, so a rate-limited read of hours takes none.
    """

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


API_CLOCK = Clock()


class AccountWindow:
    """The requests sent to one API account in the last WINDOW_SECONDS, shared by this
    process's threads (two runs of one account never add up to more than its limit).

    A request counts from the moment it is sent until WINDOW_SECONDS after its answer:
    the network counts it when it arrives, somewhere in between, so however long the
    requests travel, no WINDOW_SECONDS of the network's hold more than the limit.
    """

    def __init__(self, clock: Clock):
        self.clock = clock
        self.lock = threading.Lock()
        self.requests: list[list[float | None]] = []  # [sent, answered], answered None while in flight
        self.closed_until = 0.0  # after a 429: nothing is sent before then

    def acquire(self, *, limit: int, wait_limit: float | None = None) -> list[float | None]:
        """Wait until one more request keeps the window within `limit`, and count it; its
        entry, for `release`. Raises ReportError when that would take over `wait_limit` s."""
        while True:
            with self.lock:
                now = self.clock.now()
                self._forget(now)
                wait = self.closed_until - now
                if wait <= 0:
                    if len(self.requests) < limit:
                        entry: list[float | None] = [now, None]
                        self.requests.append(entry)
                        return entry
                    wait = self._room_at(now, limit) - now
            if wait_limit is not None and wait > wait_limit:
                raise ReportError(
                    f"the account's {limit} requests per minute are in use (a run is reading the report?); "
                    f"try again in {wait:.0f} s"
                )
            self.clock.sleep(wait)

    def release(self, entry: list[float | None]) -> None:
        """The request of `entry` was answered (or failed): its last minute in the window starts."""
        with self.lock:
            entry[1] = self.clock.now()

    def refused(self) -> float:
        """The network answered 429 (its count of the account is full, maybe with another
        client's requests): nothing more is sent until the oldest request in the window has
        left it (a whole window when none has); when that is."""
        with self.lock:
            now = self.clock.now()
            self._forget(now)
            answered = [end for _sent, end in self.requests if end is not None]
            room = min(answered) + WINDOW_SECONDS if answered else now + WINDOW_SECONDS
            self.closed_until = max(self.closed_until, room)
            return self.closed_until

    def close_until(self, moment: float) -> None:
        with self.lock:
            self.closed_until = max(self.closed_until, moment)

    def _forget(self, now: float) -> None:
        self.requests = [entry for entry in self.requests if entry[1] is None or entry[1] > now - WINDOW_SECONDS]

    def _room_at(self, now: float, limit: int) -> float:
        answered = sorted(end for _sent, end in self.requests if end is not None)
        leaving = len(self.requests) - limit  # how many must leave first, less one
        if leaving < len(answered):
            return answered[leaving] + WINDOW_SECONDS
        return now + IN_FLIGHT_POLL_SECONDS


_account_windows: dict[tuple[Clock, str, str], AccountWindow] = {}
_account_windows_lock = threading.Lock()
process_state_register("reconciliation.api_account_windows", _account_windows.clear)


def account_window(*, clock: Clock, base_url: str, api_key: str) -> AccountWindow:
    """The request window of the account (base URL, API key) in this process."""
    key = (clock, base_url, hashlib.sha256(api_key.encode()).hexdigest())
    with _account_windows_lock:
        window = _account_windows.get(key)
        if window is None:
            window = _account_windows[key] = AccountWindow(clock)
        return window


@dataclass(frozen=True)
class ApiAnswer:
    """An API's answer: its HTTP status, its JSON body decoded (None when it is not JSON), its text."""

    status: int
    body: Any
    text: str

    def message(self) -> str:
        """What the answer says went wrong: its `message`, in the envelope or not, or its plain text."""
        message = self.body.get("message") if isinstance(self.body, dict) else None
        text = str(message) if message else " ".join(self.text.split())
        return text[:200] or "no message"


class ApiClient:
    """POSTs of form fields to a source's API: timeouts, retries with backoff, the account's
    rate limit (requests_per_minute, never above what the network allows).

    Retried: 429 (after its Retry-After when it gives one; without one, once the window has
    room again, and never given up within a window) and 5xx answers, timeouts and dropped
    connections, up to RECONCILE_MAX_ATTEMPTS, waiting RECONCILE_BACKOFF_SECONDS doubled
    each time. `patient=False` (a preview): one attempt, no long wait for room. The
    source's key and secret never appear in a message.
    """

    def __init__(self, source: ReportSource, *, clock: Clock | None = None, patient: bool = True):
        self.source = source
        self.clock = clock or API_CLOCK
        self.patient = patient
        timeout = urllib3.Timeout(connect=source.timeout_seconds, read=source.timeout_seconds)
        self.pool = urllib3.PoolManager(timeout=timeout, retries=False, headers={"Accept": "application/json"})
        self.base_url = source.base_url.rstrip("/")
        self.limit = api_requests_per_minute(source)
        self.window = account_window(clock=self.clock, base_url=self.base_url, api_key=source.api_key)
        self.requests = 0

    def post(self, path: str, fields: dict[str, str], token: str | None = None) -> ApiAnswer:
        """The answer of the last attempt (any status but a retried one)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = f"{self.base_url}{path}"
        attempts = max(1, settings.RECONCILE_MAX_ATTEMPTS) if self.patient else 1
        started = self.clock.now()
        refused_since: float | None = None  # the first 429 of this request
        attempt = 0
        while True:
            attempt += 1
            entry = self.window.acquire(limit=self.limit, wait_limit=None if self.patient else PREVIEW_WAIT_SECONDS)
            self.requests += 1
            status, retry_after = None, None
            try:
                response = self.pool.request("POST", url, fields=fields, headers=headers, encode_multipart=False)
            except (urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError) as exc:
                if isinstance(exc, urllib3.exceptions.NewConnectionError):
                    problem = "cannot connect"  # refused, or no such host (urllib3 files it under timeouts)
                elif isinstance(exc, urllib3.exceptions.TimeoutError):
                    problem = "timed out"
                else:
                    problem = "connection dropped"
            except urllib3.exceptions.HTTPError as exc:
                raise ReportError(f"{path}: cannot reach {self.base_url}: {self.masked(str(exc))}") from None
            else:
                status = response.status
                if status not in RETRIED_STATUSES:
                    return ApiAnswer(status=status, body=_json(response.data), text=_text(response.data))
                problem = f"HTTP {status}"
                retry_after = _seconds(response.headers.get("Retry-After"))
            finally:
                self.window.release(entry)
            now = self.clock.now()
            backoff = min(
                settings.RECONCILE_BACKOFF_MAX_SECONDS, settings.RECONCILE_BACKOFF_SECONDS * 2 ** (attempt - 1)
            )
            if status == 429:
                # The account's minute is used up, maybe by another client: the whole
                # account waits, and the retries outlast a window before giving up.
                if retry_after is not None:
                    self.window.close_until(now + min(settings.RECONCILE_BACKOFF_MAX_SECONDS, retry_after))
                else:
                    self.window.close_until(max(self.window.refused(), now + backoff))
                refused_since = now if refused_since is None else refused_since
                give_up = attempt >= attempts and (not self.patient or now - refused_since >= WINDOW_SECONDS)
                delay = 0.0  # acquire() waits until the account may send again
            else:
                give_up = attempt >= attempts
                delay = backoff
            if give_up and attempt == 1:
                raise ReportError(f"{path}: {problem}; try again later")
            if give_up:
                raise ReportError(
                    f"{path}: {problem} on each of {attempt} attempts over {now - started:.0f} s; try again later"
                )
            logger.info("report source=%s %s %s: retrying (attempt %d)", self.source.pk, path, problem, attempt + 1)
            self.clock.sleep(delay)

    def masked(self, text: str) -> str:
        for secret in (self.source.api_key, self.source.api_secret):
            if secret:
                text = text.replace(secret, MASK)
        return text


def api_requests_per_minute(source: ReportSource) -> int:
    """The most requests a run of the source sends in any minute: its own setting, never
    above what the network allows an account."""
    return max(1, min(source.requests_per_minute, API_REQUESTS_PER_MINUTE.get(source.kind, source.requests_per_minute)))


def api_page_size(source: ReportSource) -> int:
    """Records asked per page: the source's page size, never above the network's largest page."""
    return max(1, min(source.page_size, API_PAGE_SIZE_MAX.get(source.kind, source.page_size)))


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


def _text(data: bytes) -> str:
    return data[:2000].decode("utf-8", errors="replace")


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class InvolveAsiaSession:
    """Requests to InvolveAsia's API with a bearer token: obtained with the source's key and
    secret, renewed before its two hours are up, and once more when a request is refused
    with 401 (a token revoked or expired early)."""

    def __init__(self, client: ApiClient):
        self.client = client
        self.token: str | None = None
        self.renew_at = 0.0

    def post(self, path: str, fields: dict[str, str], *, what: str) -> ApiAnswer:
        """The 200 answer to `path`; a ReportError naming `what` for any other."""
        if self.token is None or self.client.clock.now() >= self.renew_at:
            self._authenticate()
        answer = self.client.post(path, fields, token=self.token)
        if answer.status == 401:
            self._authenticate()
            answer = self.client.post(path, fields, token=self.token)
        if answer.status != 200:
            raise ReportError(f"{path} {what}: HTTP {answer.status}: {self.client.masked(answer.message())}")
        return answer

    def _authenticate(self) -> None:
        source = self.client.source
        if not source.has_credentials:
            raise ReportError("authentication failed: the source has no API key and secret; set them in the admin")
        asked_at = self.client.clock.now()
        answer = self.client.post("/authenticate", {"key": source.api_key, "secret": source.api_secret})
        data = answer.body.get("data") if isinstance(answer.body, dict) else None
        token = data.get("token") if isinstance(data, dict) else None
        if answer.status != 200 or not isinstance(token, str) or not token:
            raise ReportError(f"authentication failed: HTTP {answer.status}: {self.client.masked(answer.message())}")
        self.token = token
        self.renew_at = asked_at + TOKEN_LIFETIME_SECONDS - TOKEN_RENEW_BEFORE_SECONDS


@dataclass(frozen=True)
class ApiPage:
    """One page of `/conversions/range`: its records, the API's count of them all, the next page."""

    records: list[Any]
    count: int | None
    next_page: Any


def _involve_asia_fields(*, source: ReportSource, date_from: date, date_to: date, limit: int) -> dict[str, str]:
    fields = {"limit": str(limit), "start_date": date_from.isoformat(), "end_date": date_to.isoformat()}
    if source.preferred_currency:
        fields["filters[preferred_currency]"] = source.preferred_currency.upper()
    return fields


def _involve_asia_page(session: InvolveAsiaSession, fields: dict[str, str], page: int) -> ApiPage:
    answer = session.post("/conversions/range", {**fields, "page": str(page)}, what=f"page {page}")
    data = answer.body.get("data") if isinstance(answer.body, dict) else None
    records = data.get("data") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise ReportError(f"/conversions/range page {page}: the answer has no data.data list of records")
    count = data.get("count")
    return ApiPage(records=records, count=count if isinstance(count, int) else None, next_page=data.get("nextPage"))


def involve_asia_rows(
    *, source: ReportSource, date_from: date, date_to: date, clock: Clock | None = None
) -> Iterator[ReportRow]:
    """Every conversion record InvolveAsia's API has for its days date_from..date_to (the
    network's own days, YYYY-MM-DD), page by page: `POST {base}/authenticate`, then
    `POST {base}/conversions/range` with the bearer token until `nextPage` is null.

    Raises ReportError for a failed authentication, an answer of the wrong shape, a
    `nextPage` that does not move forward, or a request that kept failing.
    """
    client = ApiClient(source, clock=clock)
    session = InvolveAsiaSession(client)
    limit = api_page_size(source)
    fields = _involve_asia_fields(source=source, date_from=date_from, date_to=date_to, limit=limit)
    page, number, pages_read = 1, 0, 0
    while True:
        answer = _involve_asia_page(session, fields, page)
        for record in answer.records:
            number += 1
            if not isinstance(record, dict):
                raise ReportError(f"record {number} (page {page}) is not an object")
            yield ReportRow(line=number, values=record, place="record", page=page)
        pages_read += 1
        next_page = answer.next_page
        if next_page in (None, "", 0) or not answer.records:
            break
        if not isinstance(next_page, int) or next_page <= page:
            raise ReportError(f"/conversions/range page {page}: nextPage {next_page!r} does not move forward")
        if answer.count is not None and pages_read > answer.count // limit + 1:
            raise ReportError(f"/conversions/range: more pages than its count of {answer.count} records needs")
        page = next_page
    logger.info("report source=%s: %d records in %d pages, %d requests", source.pk, number, pages_read, client.requests)


def involve_asia_first_page(
    *, source: ReportSource, date_from: date, date_to: date, limit: int, clock: Clock | None = None
) -> ApiPage:
    """The first page of the network's days date_from..date_to, of at most `limit` records
    (one authentication and one request, no long waits: for a person looking)."""
    client = ApiClient(source, clock=clock, patient=False)
    limit = max(1, min(limit, api_page_size(source)))
    fields = _involve_asia_fields(source=source, date_from=date_from, date_to=date_to, limit=limit)
    return _involve_asia_page(InvolveAsiaSession(client), fields, 1)
