"""A local fake of InvolveAsia's published conversions API (127.0.0.1 only), faults on demand.

Built from the API's documentation, not from our client:

- `POST /api/authenticate`, form `key`, `secret` -> 200 `{"status": "success", "message":
  "Success", "data": {"token": ...}}`, the token valid 2 hours; a wrong key or secret -> 401.
- `POST /api/conversions/range`, `Authorization: Bearer <token>`, form `start_date`,
  `end_date` (YYYY-MM-DD, the network's days, GMT+8: the date of `datetime_conversion`),
  `page` (1-based), `limit`, optional `filters[preferred_currency]` (the amounts converted,
  `currency` says it) and `filters[conversion_status]` -> 200 `{"status": "success",
  "message": "Success", "data": {"page", "limit", "count", "nextPage" (null on the last
  page), "data": [records]}}`. A `limit` over 100 is refused: 422 in the envelope (this
  fake's choice: the API either refuses or caps it).
- 60 requests per minute per account, authentication included, counted over a sliding
  minute of the requests it accepted: over it, 429 without a Retry-After header.
- A missing, wrong or expired token -> 401 `{"message": "Unauthenticated."}` (not the
  envelope); missing arguments -> 401 with a plain-text body.

Time is the `clock`'s (a VirtualClock in tests, shared with the client), so its rate limit
and tokens' hours count in the same time as the client's waits. `faults` maps a page
number to what its next request gets instead: "429", "timeout" (an answer later than the
client waits, in real time), "401" (its token refused as if revoked), "401 text" (the same
in plain text), "500"; with " always", every request for that page. `other_client` is how
many requests another client of the account sends at the start of each minute.
"""

import datetime
import json
import threading
import time
from decimal import ROUND_HALF_UP, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

from reconciliation.sources import Clock

WINDOW_SECONDS = 60.0
TOKEN_SECONDS = 2 * 3600.0
PAGE_LIMIT_MAX = 100
# What one unit of each currency is worth in USD, for filters[preferred_currency].
USD_RATES = {"USD": Decimal("1"), "MYR": Decimal("0.2248"), "SGD": Decimal("0.7425"), "IDR": Decimal("0.0000631")}


class VirtualClock(Clock):
    """Time that passes only when someone waits: `sleep` moves it on at once."""

    def __init__(self, start: float = 1_000_000.0):
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self._now += max(0.0, seconds)


def record(number: int, **fields: Any) -> dict[str, Any]:
    """A conversion record as the API publishes it (MYR, pending, 2025-03-01 10:00:00 GMT+8)."""
    return {
        "conversion_id": 778800000 + number,
        "offer_id": 1021,
        "offer_name": "Shopee MY",
        "sale_amount": "415.80",
        "payout": "20.79",
        "base_payout": "18.79",
        "bonus_payout": "2.00",
        "currency": "MYR",
        "aff_sub1": f"s{number}",
        "aff_sub2": f"m{number}",
        "aff_sub3": f"c{number}",
        "aff_sub4": "",
        "aff_sub5": "",
        "adv_sub1": f"ORDER-{number}",
        "adv_sub2": "",
        "adv_sub3": "",
        "adv_sub4": "",
        "adv_sub5": "",
        "datetime_conversion": "2025-03-01 10:00:00",
        "conversion_status": "pending",
        **fields,
    }


def most_in_window(times: list[float], seconds: float = WINDOW_SECONDS) -> int:
    """The most of `times` that fall in any `seconds` (a half-open window (t - seconds, t])."""
    ordered = sorted(times)
    most, first = 0, 0
    for last, moment in enumerate(ordered):
        while ordered[first] <= moment - seconds:
            first += 1
        most = max(most, last - first + 1)
    return most


class FakeInvolveAsia:
    def __init__(
        self,
        records: list[dict[str, Any]],
        *,
        key: str,
        secret: str,
        clock: Clock | None = None,
        faults: dict[int, str] | None = None,
        per_minute: int = 60,
    ):
        self.records = records
        self.key, self.secret = key, secret
        self.clock = clock or Clock()
        self.faults = dict(faults or {})
        self.per_minute = per_minute
        self.delay = 1.0  # how late (real seconds) a "timeout" answer comes
        self.page_seconds = 0.0  # virtual seconds each page takes to answer
        self.other_client = 0  # requests another client of the account sends each minute
        self._other_minute: int | None = None
        self._chosen: tuple[Any, list[dict[str, Any]]] = (None, [])  # the last query's records
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.arrivals: list[float] = []  # the clock's time of each request received
        self.accepted: list[float] = []  # ... of each it counted (not answered 429), another client's too
        self.refused = 0  # answered 429
        self.unauthorized = 0  # answered 401
        self.served: list[Any] = []  # conversion_id of every record in a page answered in time
        self.tokens: dict[str, float] = {}  # token -> when it expires
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                with fake.lock:
                    now = fake.clock.now()
                    if fake.other_client and fake._other_minute != int(now // WINDOW_SECONDS):
                        fake._other_minute = int(now // WINDOW_SECONDS)
                        fake._spend(fake.other_client, now)
                    fake.requests.append((self.path, form))
                    fake.arrivals.append(now)
                    if fake._full(now):
                        fake.refused += 1
                        limited = True
                    else:
                        fake.accepted.append(now)
                        limited = False
                if limited:
                    return self.answer(429, {"message": "Too Many Attempts."})
                if self.path == "/api/authenticate":
                    return self.authenticate(form, now)
                if self.path == "/api/conversions/range":
                    return self.conversions(form, now)
                return self.answer(404, {"message": "Not Found."})

            def authenticate(self, form: dict[str, str], now: float) -> None:
                if form.get("key") != fake.key or form.get("secret") != fake.secret:
                    return self.refuse({"status": "error", "message": "Invalid key or secret", "data": None})
                with fake.lock:
                    token = f"token-{len(fake.tokens) + 1}"
                    fake.tokens[token] = now + TOKEN_SECONDS
                return self.answer(200, {"status": "success", "message": "Success", "data": {"token": token}})

            def conversions(self, form: dict[str, str], now: float) -> None:
                scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
                with fake.lock:
                    valid = scheme == "Bearer" and fake.tokens.get(token, 0.0) > now
                if not valid:
                    return self.refuse({"message": "Unauthenticated."})
                try:
                    first = datetime.date.fromisoformat(form["start_date"])
                    last = datetime.date.fromisoformat(form["end_date"])
                    page, limit = int(form.get("page", "1")), int(form.get("limit", str(PAGE_LIMIT_MAX)))
                except (KeyError, ValueError):
                    return self.refuse(None)
                if limit > PAGE_LIMIT_MAX or limit < 1 or page < 1:
                    message = f"The limit must be between 1 and {PAGE_LIMIT_MAX}."
                    return self.answer(422, {"status": "error", "message": message, "data": None})
                with fake.lock:
                    fault = fake.faults.get(page, "")
                    if not fault.endswith(" always"):
                        fake.faults.pop(page, None)
                fault = fault.removesuffix(" always")
                if fault == "429":
                    with fake.lock:
                        fake.accepted.remove(now)  # refused, as if the minute were full
                        fake.refused += 1
                    return self.answer(429, {"message": "Too Many Attempts."})
                if fault == "401":
                    return self.refuse({"message": "Unauthenticated."})
                if fault == "401 text":
                    return self.refuse(None)
                if fault == "500":
                    return self.answer(500, {"message": "Server Error"})
                if fault == "timeout":
                    time.sleep(fake.delay)
                    return self.answer(200, {"status": "success", "data": {}})  # too late: the client gave up
                if fake.page_seconds:
                    fake.clock.sleep(fake.page_seconds)
                chosen = fake.chosen(
                    first, last, form.get("filters[conversion_status]"), form.get("filters[preferred_currency]")
                )
                chunk = chosen[(page - 1) * limit : page * limit]
                with fake.lock:
                    fake.served += [r["conversion_id"] for r in chunk]
                more = page * limit < len(chosen)
                data = {"page": page, "limit": limit, "count": len(chosen), "nextPage": page + 1 if more else None}
                return self.answer(200, {"status": "success", "message": "Success", "data": {**data, "data": chunk}})

            def refuse(self, body: Any) -> None:
                """401: `body` as JSON, or (None) a plain-text body."""
                with fake.lock:
                    fake.unauthorized += 1
                if body is None:
                    return self.answer(401, None, text="Unauthorized.")
                return self.answer(401, body)

            def answer(self, status: int, body: Any, text: str | None = None) -> None:
                data = (text if text is not None else json.dumps(body)).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain" if text is not None else "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _full(self, now: float) -> bool:
        return sum(1 for moment in self.accepted if moment > now - WINDOW_SECONDS) >= self.per_minute

    def spend(self, count: int) -> None:
        """Another client of the account sends `count` requests now (as many as its minute allows)."""
        with self.lock:
            self._spend(count, self.clock.now())

    def _spend(self, count: int, now: float) -> None:
        for _ in range(count):
            if not self._full(now):
                self.accepted.append(now)

    def chosen(
        self, first: datetime.date, last: datetime.date, status: str | None, preferred: str | None
    ) -> list[dict[str, Any]]:
        """The records of the days first..last (and status), as the API answers them."""
        key = (id(self.records), len(self.records), first, last, status, preferred)
        with self.lock:
            if self._chosen[0] == key:
                return self._chosen[1]
        chosen = [
            self.converted(r, preferred)
            for r in self.records
            if first.isoformat() <= str(r.get("datetime_conversion", ""))[:10] <= last.isoformat()
            and status in (None, "", r.get("conversion_status"))
        ]
        with self.lock:
            self._chosen = (key, chosen)
        return chosen

    @staticmethod
    def converted(original: dict[str, Any], preferred: str | None) -> dict[str, Any]:
        """The record with its amounts in the preferred currency, as the API converts them."""
        currency = original.get("currency")
        if not preferred or currency == preferred or currency not in USD_RATES or preferred not in USD_RATES:
            return original
        rate = USD_RATES[currency] / USD_RATES[preferred]
        converted = dict(original, currency=preferred)
        for name in ("sale_amount", "payout", "base_payout", "bonus_payout"):
            if original.get(name) not in (None, ""):
                amount = Decimal(str(original[name])) * rate
                converted[name] = str(amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
        return converted

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api"

    def pages_requested(self) -> list[int]:
        return [int(form["page"]) for path, form in self.requests if path == "/api/conversions/range"]

    def authentications(self) -> int:
        return sum(1 for path, _form in self.requests if path == "/api/authenticate")

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
