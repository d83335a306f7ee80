"""A small load generator for tests against real servers: keep-alive clients on threads."""

import http.client
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Answer:
    """One request: what was asked, when, and what came back (status 0: no answer)."""

    path: str
    started: float
    finished: float
    status: int
    outcome: str | None

    @property
    def seconds(self) -> float:
        return self.finished - self.started


def load(
    base: str, next_path: Callable[[int, int], str | None], *, clients: int, seconds: float, pause: float = 0.0
) -> list[Answer]:
    """`clients` threads send GET next_path(client, n) for `seconds` (or until it returns None)."""
    parts = urlsplit(base)
    answers: list[Answer] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        mine = []
        n = 0
        while time.monotonic() < deadline:
            path = next_path(index, n)
            if path is None:
                break
            n += 1
            started = time.monotonic()
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                status = response.status
                try:
                    outcome = json.loads(body).get("status")
                except ValueError:
                    outcome = None
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
            except (OSError, http.client.HTTPException):
                connection.close()
                status, outcome = 0, None
            mine.append(Answer(path, started, time.monotonic(), status, outcome))
            if pause:
                time.sleep(pause)
        connection.close()
        with lock:
            answers.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
