"""A fake publisher: an HTTP server on 127.0.0.1 that records every postback it receives.

Used by tests/publishers and bench/forwarding_bench.py. `script` decides each answer
(a status code, in order; then `default_status`); `delay` makes it answer slowly.
Run alone (`python tests/support/fake_publisher.py --port 9000 --delay 0.05`) it answers 200s.
"""

import argparse
import contextlib
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    started: float
    finished: float = 0.0
    status: int = 0


class FakePublisher:
    def __init__(self, *, delay: float = 0.0, default_status: int = 200, port: int = 0):
        self.delay = delay
        self.default_status = default_status
        self.script: list[int] = []
        self.received: list[Received] = []
        self.lock = threading.Lock()
        publisher = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                record = Received(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    started=time.time(),
                )
                with publisher.lock:
                    status = publisher.script.pop(0) if publisher.script else publisher.default_status
                    publisher.received.append(record)  # on arrival: a sender killed meanwhile is seen too
                try:
                    if publisher.delay:
                        time.sleep(publisher.delay)
                    answer = b'{"ok": true}' if status < 400 else b'{"error": "nope"}'
                    self.send_response(status)
                    if 300 <= status < 400:
                        self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    record.status = status
                finally:
                    record.finished = time.time()

            do_GET = _answer
            do_POST = _answer

            def log_message(self, *args) -> None:
                pass

            def handle(self) -> None:
                # A sender that dies mid-request (a killed worker) is expected here.
                with contextlib.suppress(ConnectionError):
                    super().handle()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.server.request_queue_size = 256
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakePublisher":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answers(self, *statuses: int) -> None:
        with self.lock:
            self.script = list(statuses)

    def requests(self) -> list[Received]:
        with self.lock:
            return list(self.received)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    arguments = parser.parse_args()
    with FakePublisher(delay=arguments.delay, port=arguments.port) as fake:
        print(fake.port, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            fake.thread.join()
