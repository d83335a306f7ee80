"""Raw HTTP/1.1 over a socket, for what urllib cannot send: pipelining, chunked, slow, malformed."""

import http.client
import io
import json
import resource
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def address(base: str) -> tuple[str, int]:
    parts = urlsplit(base)
    return parts.hostname, parts.port


def connect(base: str, timeout: float = 10) -> socket.socket:
    return socket.create_connection(address(base), timeout=timeout)


def read_until_closed(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes the connection (or `timeout` passes)."""
    sock.settimeout(timeout)
    received = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    except (TimeoutError, ConnectionResetError):
        pass
    return received


def exchange(base: str, data: bytes, timeout: float = 10) -> bytes:
    """Send `data` on a new connection; return all the server answers until it closes."""
    with connect(base, timeout) as sock:
        sock.sendall(data)
        return read_until_closed(sock, timeout)


class _Replay(io.BytesIO):
    def close(self) -> None:  # http.client closes its file after each response: keep it open
        pass


class _ReplaySocket:
    def __init__(self, data: bytes):
        self.file = _Replay(data)

    def makefile(self, mode: str) -> io.BytesIO:
        return self.file


def answers(data: bytes) -> list[Answer]:
    """The HTTP responses in `data`, in order (pipelined answers are read one after another)."""
    replay = _ReplaySocket(data)
    parsed = []
    while replay.file.tell() < len(data):
        response = http.client.HTTPResponse(replay)
        response.begin()
        parsed.append(Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()))
    return parsed


def request(method: str, target: str, *, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    """One request's bytes; a Content-Length is added for a body unless headers say otherwise."""
    fields = {"Host": "localhost", **(headers or {})}
    if body and not any(name.lower() in ("content-length", "transfer-encoding") for name in fields):
        fields["Content-Length"] = str(len(body))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return head.encode("latin-1") + b"\r\n" + body


def chunked(body: bytes, size: int = 7) -> bytes:
    """`body` in the chunked transfer coding, in chunks of `size` bytes."""
    pieces = [body[start : start + size] for start in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


def open_files_allow(count: int) -> None:
    """Raise this process's open-file limit (inherited by servers started after) to `count`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < count:
        wanted = count if hard == resource.RLIM_INFINITY else min(count, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    assert soft == resource.RLIM_INFINITY or soft >= count, f"cannot open {count} files (hard limit {hard})"
