"""Request bodies read in the event loop: kept in memory while small, in a temporary file
once large, and `Transfer-Encoding: chunked` decoded as it arrives."""

import io
import tempfile
from typing import IO, Any

from gunicorn.http.body import CHUNK_EXT_RE
from gunicorn.http.message import TOKEN_RE

from infra.http.limits import BodyLimit
from infra.http.refusals import EdgeRefusal, body_too_large


class BodySpool:
    """A request body as it arrives: in memory up to `memory_bytes`, then in an unnamed
    temporary file (in `temp_dir`, the system's by default), so that an upload of tens of
    megabytes costs the worker disk, not memory."""

    def __init__(self, *, memory_bytes: int, temp_dir: str | None = None):
        self.size = 0
        self._memory = bytearray()
        self._file: IO[bytes] | None = None
        self._memory_bytes = memory_bytes
        self._temp_dir = temp_dir

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.size += len(data)
        if self._file is None:
            if len(self._memory) + len(data) <= self._memory_bytes:
                self._memory += data
                return
            # Open across many reads of the event loop and the request's thread: close() ends it.
            self._file = tempfile.TemporaryFile(dir=self._temp_dir)  # noqa: SIM115
            self._file.write(self._memory)
            self._memory = bytearray()
        self._file.write(data)

    def stream(self) -> IO[bytes]:
        """The body, for the application to read from its start (`wsgi.input`)."""
        if self._file is None:
            return io.BytesIO(self._memory)
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        """Remove the temporary file, if there is one (the body is no longer readable)."""
        if self._file is not None:
            self._file.close()


def chunked_invalid(problem: str) -> EdgeRefusal:
    return EdgeRefusal(400, "chunked_body_invalid", f"Malformed chunked body: {problem}")


class ChunkedBody:
    """A `Transfer-Encoding: chunked` body, decoded as its bytes arrive (RFC 9112 section 7.1)."""

    def __init__(self, *, limit: BodyLimit, line_limit: int, trailer_limit: int, body: BodySpool):
        self.body = body  # what has been decoded so far
        self.limit = limit
        self.line_limit = line_limit
        self.trailer_limit = trailer_limit
        self._state = "size"
        self._remaining = 0
        self._trailer_bytes = 0

    def feed(self, buf: bytearray) -> bool:
        """Consume what `buf` holds of the body; True once it is complete (what follows stays in `buf`).

        Raises EdgeRefusal: 400 for a malformed encoding, 413 past the limit once decoded.
        """
        while True:
            if self._state == "data":
                taken = min(self._remaining, len(buf))
                with memoryview(buf) as view:
                    self.body.write(view[:taken])
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
                elif self.body.size + size > self.limit.max_bytes:
                    raise body_too_large(self.limit)
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
