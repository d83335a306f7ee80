"""A local fake of InvolveAsia's conversions API (127.0.0.1 only), with faults on demand.

`POST /api/authenticate` (form: key, secret) -> {"data": {"token": ...}};
`POST /api/conversions/range` (Bearer token; form: page, limit, start_date, end_date)
-> {"data": {"page", "limit", "count", "nextPage", "data": [records]}}. `faults` maps a
page number to what its first request gets instead: "429" or "timeout" (an answer
later than the client waits); "429 always" for every request of the page.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

TOKEN = "fake-token-1"


class FakeInvolveAsia:
    def __init__(self, records: list[dict[str, Any]], *, key: str, secret: str, faults: dict[int, str] | None = None):
        self.records = records
        self.key, self.secret = key, secret
        self.faults = dict(faults or {})
        self.delay = 1.0  # how late a "timeout" answer comes
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.arrivals: list[float] = []  # time.monotonic() of each request
        self.served: list[str] = []  # conversion_ids of every record in a page answered in time
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                with fake.lock:
                    fake.requests.append((self.path, form))
                    fake.arrivals.append(time.monotonic())
                if self.path == "/api/authenticate":
                    if form.get("key") == fake.key and form.get("secret") == fake.secret:
                        return self.answer(200, {"status": "success", "data": {"token": TOKEN}})
                    return self.answer(401, {"status": "error", "message": "Invalid key or secret", "data": None})
                if self.path != "/api/conversions/range":
                    return self.answer(404, {"status": "error", "message": "not found"})
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self.answer(401, {"status": "error", "message": "Unauthenticated"})
                page, limit = int(form["page"]), int(form["limit"])
                with fake.lock:
                    fault = fake.faults.get(page, "")
                    if not fault.endswith(" always"):
                        fake.faults.pop(page, None)
                if fault.startswith("429"):
                    return self.answer(429, {"status": "error", "message": "Too Many Requests"}, {"Retry-After": "0"})
                if fault == "timeout":
                    time.sleep(fake.delay)
                    return self.answer(200, {"data": {}})  # too late: the client gave up on it
                chunk = fake.records[(page - 1) * limit : page * limit]
                more = page * limit < len(fake.records)
                with fake.lock:
                    fake.served += [record["conversion_id"] for record in chunk]
                body = {
                    "status": "success",
                    "data": {
                        "page": page,
                        "limit": limit,
                        "count": len(fake.records),
                        "nextPage": page + 1 if more else None,
                        "data": chunk,
                    },
                }
                return self.answer(200, body)

            def answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api"

    def pages_requested(self) -> list[int]:
        return [int(form["page"]) for path, form in self.requests if path == "/api/conversions/range"]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
