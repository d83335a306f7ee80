"""Request bodies read in the event loop: `Transfer-Encoding: chunked` decoded as it arrives."""

from typing import Any

from gunicorn.http.body import CHUNK_EXT_RE
from gunicorn.http.message import TOKEN_RE

from infra.http.refusals import EdgeRefusal


def chunked_invalid(problem: str) -> EdgeRefusal:
    return EdgeRefusal(400, "chunked_body_invalid", f"Malformed chunked body: {problem}")


class ChunkedBody:
    """A `Transfer-Encoding: chunked` body, decoded as its bytes arrive (RFC 9112 section 7.1)."""

    def __init__(self, *, max_bytes: int, line_limit: int, trailer_limit: int):
        self.data = bytearray()
        self.max_bytes = max_bytes
        self.line_limit = line_limit
        self.trailer_limit = trailer_limit
        self._state = "size"
        self._remaining = 0
        self._trailer_bytes = 0

    def feed(self, buf: bytearray) -> bool:
        """Consume what `buf` holds of the body; True once it is complete (what follows stays in `buf`).

        Raises EdgeRefusal: 400 for a malformed encoding, 413 past `max_bytes` decoded.
        """
        while True:
            if self._state == "data":
                taken = min(self._remaining, len(buf))
                self.data += buf[:taken]
                del buf[:taken]
                self._remaining -= taken
                if self._remaining:
                    return False
                self._state = "data_end"
            if self._state == "data_end":
                if len(buf) < 2:
                    if buf and buf[0] != 13:
                        raise chunked_invalid("chunk data is not followed by CRLF")
                    return False
                if buf[:2] != b"\r\n":
                    raise chunked_invalid("chunk data is not followed by CRLF")
                del buf[:2]
                self._state = "size"
            line = self._line(buf)
            if line is None:
                if self._state == "size" and not self._size_prefix_valid(buf):
                    raise chunked_invalid(f"invalid chunk size {bytes(buf[:20]).decode('latin-1')!r}")
                return False
            if self._state == "size":
                size = self._size(line)
                if size == 0:
                    self._state = "trailer"
                elif len(self.data) + size > self.max_bytes:
                    raise EdgeRefusal(
                        413,
                        "body_too_large",
                        f"The chunked request body is over the limit of {self.max_bytes} bytes",
                        {"body": f"is over {self.max_bytes} bytes"},
                    )
                else:
                    self._remaining = size
                    self._state = "data"
            elif not line:  # the empty line that ends the trailer section
                self._state = "done"
                return True
            else:
                self._trailer_bytes += len(line) + 2
                if self._trailer_bytes > self.trailer_limit:
                    raise chunked_invalid(f"trailer section over {self.trailer_limit} bytes")
                name, colon, _ = line.partition(b":")
                if not colon or not TOKEN_RE.fullmatch(name.decode("latin-1")):
                    raise chunked_invalid("invalid trailer field")

    def _line(self, buf: bytearray) -> bytes | None:
        """The next CRLF-terminated line, taken out of `buf`; None until it is complete."""
        end = buf.find(b"\r\n", 0, self.line_limit + 2)
        if end < 0:
            if b"\n" in buf or len(buf) > self.line_limit:
                raise chunked_invalid("a chunk size or trailer line is too long or does not end with CRLF")
            return None
        line = bytes(buf[:end])
        del buf[: end + 2]
        if b"\n" in line or b"\r" in line:
            raise chunked_invalid("a line does not end with CRLF")
        return line

    @staticmethod
    def _size_prefix_valid(buf: bytearray) -> bool:
        """Whether an incomplete chunk size line can still become a valid one (refuse early)."""
        size = bytes(buf).partition(b";")[0].rstrip(b" \t\r")
        return len(size) <= 16 and all(byte in b"0123456789abcdefABCDEF" for byte in size)

    @staticmethod
    def _size(line: bytes) -> int:
        size, semicolon, extension = line.partition(b";")
        if semicolon:
            size = size.rstrip(b" \t")  # RFC 9112 7.1.1: whitespace only before an extension
            if not CHUNK_EXT_RE.fullmatch(b";" + extension):
                raise chunked_invalid("invalid chunk extension")
        if not 0 < len(size) <= 16 or any(byte not in b"0123456789abcdefABCDEF" for byte in size):
            raise chunked_invalid(f"invalid chunk size {size[:20].decode('latin-1')!r}")
        return int(size, 16)


class UnreadBody:
    """`wsgi.input` of a request whose declared body is over the limit and was never read.

    The postback view refuses such a request by its Content-Length before reading it; any
    other view that tries to read it gets Django's "request body too large" (a 400).
    """

    def _refuse(self, *args: Any) -> bytes:
        from django.core.exceptions import RequestDataTooBig

        raise RequestDataTooBig("The request body is over POSTBACK_MAX_BODY_BYTES and was not read")

    read = readline = _refuse

    def readlines(self, *args: Any) -> list[bytes]:
        return [self._refuse()]

    def __iter__(self):
        return iter(self.readlines())
