"""The gunicorn worker: a request is read whole in the event loop before a thread serves it.

gunicorn's gthread worker hands a connection to a pool thread as soon as it is readable,
and the thread then blocks reading the head and the body: eight clients sending one byte
every two seconds hold every thread of a 2 x 4 server. `PostbackWorker` reads heads and
bodies without blocking in the worker's main loop, under deadlines
(`GUNICORN_HEADER_TIMEOUT`, `GUNICORN_BODY_TIMEOUT`) and size limits, and submits a
request to the pool only once it is complete. Idle kept-alive connections and connections
that have not spoken yet wait in the poller and hold no thread. A chunked body is decoded
as it arrives and handed to the application as an ordinary body with CONTENT_LENGTH.

The body limit follows the path: the admin's uploads (a network's CSV report) may reach
`ADMIN_UPLOAD_MAX_BYTES`, everything else `POSTBACK_MAX_BODY_BYTES`. A body over 1 MiB
is written to a temporary file as it arrives, and the application reads it from there, so
a worker's memory does not grow with uploads. What the server refuses before the
application sees it is answered in JSON: `{"status": "error", "reason": ..., "message": ...}`.

The limits are in limits.py, the JSON refusals in refusals.py, body buffering and decoding
in chunked.py; `PostbackLogger` (logger.py) masks secrets in gunicorn's own log lines.

Checked against gunicorn 27.0.1. Besides its documented hooks this relies on gthread's
ThreadWorker internals (`tpool`, `poller`, `method_queue`, `nr_conns`, `_accepting`,
`set_accept_enabled`, `handle_request`, `wait_for_and_dispatch_events`,
`is_parent_alive`), on a parsed `Request`'s private `_expected_100_continue` flag and
its body reader (`LengthReader.length`, `ChunkedReader`), on the parser's module
constants (`CHUNK_EXT_RE`, `TOKEN_RE`, `MAX_REQUEST_LINE`), and on how `wsgi.create()`
derives PATH_INFO (repeated by `limits.request_path_info`).
"""

import contextlib
import errno
import io
import selectors
import socket
import struct
import time
from datetime import timedelta
from functools import partial
from http import HTTPStatus
from typing import Any

from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.http.body import ChunkedReader
from gunicorn.http.message import Request
from gunicorn.http.unreader import IterUnreader
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers.gthread import ThreadWorker

from infra.http.chunked import BodySpool, ChunkedBody, UnreadBody
from infra.http.limits import BODY_MEMORY_BYTES, EdgeLimits, request_line_limit, request_path_info
from infra.http.refusals import EdgeRefusal, body_too_large, refusal_for
from infra.masking import url_masked

# Connection states. Every state but APP waits in the poller under a deadline.
IDLE = "idle"  # no byte of the next request yet (new or kept-alive connection)
HEAD = "head"  # reading the request line and headers
BODY = "body"  # reading the body
APP = "app"  # a pool thread is serving the request
CLOSING = "closing"  # answered; write side shut, draining what the client still sends
CLOSED = "closed"

READ_SIZE = 65536
# After a final answer: how long, and how many bytes, to drain before closing, so the
# kernel does not reset the connection (and lose the answer) over unread request bytes.
CLOSE_LINGER_SECONDS = 2.0
CLOSE_DRAIN_BYTES = 65536
# A stopping worker keeps idle connections this long, for a request already on its way.
STOP_LINGER_SECONDS = 2.0
# Deadlines are checked this often (and at least once per poll, which waits up to 1 s).
EXPIRY_SCAN_SECONDS = 0.25
# Header names gunicorn itself refuses, safe to name in an answer (never header values).


class EdgeConnection:
    """One client connection and what has been read of its current request."""

    __slots__ = (
        "sock",
        "client",
        "server",
        "buf",
        "state",
        "deadline",
        "req",
        "body_length",
        "body_started",
        "body_received",
        "spool",
        "chunked",
        "requests",
        "registered",
        "drained",
        "drain_limit",
        "readable",
        "scanned",
        "line_end",
    )

    def __init__(self, sock: socket.socket, client: Any, server: Any):
        self.sock = sock
        self.client = client
        self.server = server
        self.buf = bytearray()
        self.state = IDLE
        self.deadline = 0.0
        self.req: Request | None = None
        self.body_length: int | None = 0  # None: over the limit, handed over unread
        self.body_started = 0.0  # when the head was complete
        self.body_received = 0  # bytes received since (the deadline moves on with them)
        self.spool: BodySpool | None = None  # a body with a Content-Length over BODY_MEMORY_BYTES
        self.chunked: ChunkedBody | None = None
        self.requests = 0
        self.registered = False
        self.drained = 0
        self.drain_limit = CLOSE_DRAIN_BYTES
        self.readable = None
        self.scanned = 0  # how much of the buffer the head scan has looked at
        self.line_end = -1  # where the request line ends, once seen


class PostbackWorker(ThreadWorker):
    """gthread, with each request read whole in the main loop before a pool thread serves it."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.limits: EdgeLimits | None = None
        # Every connection not being served by a thread: each has a deadline.
        self.waiting: set[EdgeConnection] = set()
        # Idle connections after an answer; gthread's handle_request takes its len() to
        # decide whether to keep another connection alive.
        self.keepalived_conns: set[EdgeConnection] = set()
        self._next_expiry_scan = 0.0
        self._send_timeout = b""
        self._body_temp_dir: str | None = None

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        super().check_config(cfg, log)
        unsupported = []
        if cfg.is_ssl:
            unsupported.append("TLS (certfile/keyfile)")
        if "h2" in cfg.http_protocols:
            unsupported.append("HTTP/2 (http_protocols)")
        if cfg.proxy_protocol != "off":
            unsupported.append("the PROXY protocol")
        if getattr(cfg, "protocol", "http") != "http":
            unsupported.append(f"protocol {cfg.protocol!r}")
        if unsupported:
            raise RuntimeError(f"PostbackWorker serves plain HTTP/1.x only; turn off: {', '.join(unsupported)}")

    # --- the main loop ------------------------------------------------------------

    def run(self) -> None:
        from django.conf import settings

        self.limits = EdgeLimits.from_env(
            max_body_bytes=settings.POSTBACK_MAX_BODY_BYTES, max_admin_body_bytes=settings.ADMIN_UPLOAD_MAX_BYTES
        )
        # Where Django puts uploaded files too: one place for the disk that uploads use.
        self._body_temp_dir = settings.FILE_UPLOAD_TEMP_DIR
        seconds, fraction = divmod(self.limits.send_timeout, 1)
        self._send_timeout = struct.pack("@ll", int(seconds), int(fraction * 1_000_000))  # struct timeval
        self.poller.register(self.method_queue.fileno(), selectors.EVENT_READ, self.method_queue.run_callbacks)
        self.set_accept_enabled(True)
        # gthread's own loop (gunicorn 27.0.1, private: nr_conns, _accepting), with our expiry.
        while self.alive:
            self.notify()
            can_accept = self.nr_conns < self.worker_connections
            if can_accept != self._accepting:
                self.set_accept_enabled(can_accept)
            self.wait_for_and_dispatch_events(timeout=1.0)
            if not self.is_parent_alive():
                break
            self.connections_expire()
        self.stop()

    def stop(self) -> None:
        """Stop accepting, finish what is in flight within graceful_timeout, close the rest."""
        self.set_accept_enabled(False)
        now = time.monotonic()
        for conn in self.waiting:
            if conn.state == IDLE:
                conn.deadline = min(conn.deadline, now + STOP_LINGER_SECONDS)
        graceful_deadline = now + self.cfg.graceful_timeout
        while self.nr_conns > 0 and time.monotonic() < graceful_deadline:
            self.notify()
            self.wait_for_and_dispatch_events(timeout=EXPIRY_SCAN_SECONDS)
            self.connections_expire()
        for conn in list(self.waiting):
            self.close(conn)
        self.tpool.shutdown(wait=False)
        self.poller.close()
        self.method_queue.close()
        for listener in self.sockets:
            listener.close()

    def accept(self, listener: socket.socket) -> None:
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return
            raise
        sock.setblocking(False)
        # A client that stops reading holds a thread at most this long per write. The
        # kernel's send timeout costs nothing per write, where a Python socket timeout
        # costs a poll() and a round trip of the GIL.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, self._send_timeout)
        self.nr_conns += 1
        conn = EdgeConnection(sock, client, listener.getsockname())
        conn.readable = partial(self.on_readable, conn)
        # A new connection has GUNICORN_HEADER_TIMEOUT from now to send its whole head.
        conn.deadline = time.monotonic() + self.limits.header_timeout
        self.waiting.add(conn)
        self.on_readable(conn)  # the request is often there already

    def on_readable(self, conn: EdgeConnection, _fileobj: Any = None) -> None:
        """Read what the client sent; serve the request once it is complete."""
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            self.watch(conn)
            return
        except OSError:
            self.close(conn)
            return
        if not data:
            self.close(conn)
            return
        if conn.state == CLOSING:
            conn.drained += len(data)
            if conn.drained > conn.drain_limit:
                self.close(conn)
            elif conn.drain_limit > CLOSE_DRAIN_BYTES:
                # A refused upload is dropped under the deadline it would have been read
                # under; once all of it is in, the client reads the answer and closes.
                if conn.drained == conn.drain_limit:
                    conn.deadline = time.monotonic() + CLOSE_LINGER_SECONDS
                else:
                    conn.deadline = conn.body_started + self.limits.body_seconds(conn.drained)
            return
        if conn.state == BODY:
            conn.body_received += len(data)
            conn.deadline = conn.body_started + self.limits.body_seconds(conn.body_received)
        conn.buf += data
        self.advance(conn)

    def advance(self, conn: EdgeConnection) -> None:
        """Parse as far as the buffer allows; hand the request to a thread once it is complete."""
        try:
            if conn.state == IDLE:
                if not conn.buf:
                    self.watch(conn)
                    return
                conn.state = HEAD
                conn.scanned = 0
                conn.line_end = -1
                if conn.requests:  # the first request's deadline counts from the accept
                    conn.deadline = time.monotonic() + self.limits.header_timeout
            if conn.state == HEAD and not self.head_read(conn):
                self.watch(conn)
                return
            if conn.state == BODY and not self.body_read(conn):
                self.watch(conn)
                return
        except (http_errors.NoMoreData, StopIteration):
            self.close(conn)
            return
        except Exception as exc:
            refusal = refusal_for(exc, cfg=self.cfg, limits=self.limits)
            if refusal.status >= 500:
                self.log.exception("Error reading a request")
            self.refuse(conn, refusal)
            return
        self.dispatch(conn)

    def head_read(self, conn: EdgeConnection) -> bool:
        """Parse the request head once the buffer holds all of it; False until then."""
        buf = conn.buf
        end = buf.find(b"\r\n\r\n", max(conn.scanned - 3, 0))
        if end < 0:
            self._head_check_partial(conn)
            conn.scanned = len(buf)
            return False
        head_length = end + 4
        if head_length > self.limits.max_head_bytes:
            raise http_errors.LimitRequestHeaders("max buffer headers")
        head = bytes(buf[:head_length])
        del buf[:head_length]
        # The parser reads only this head: what follows stays in the buffer (body, or
        # the next pipelined request).
        req = Request(self.cfg, IterUnreader((head,)), conn.client, conn.requests + 1)
        conn.req = req
        self._body_frame(conn, req)
        return True

    def _head_check_partial(self, conn: EdgeConnection) -> None:
        """Refuse an incomplete head as soon as it cannot become a valid one (scanning only
        the bytes that arrived since the last call: a client may send one byte at a time)."""
        buf = conn.buf
        if conn.line_end < 0:
            start = 2 if buf[:2] == b"\r\n" else 0  # RFC 9112 2.2: one empty line before a request is ignored
            conn.line_end = buf.find(b"\r\n", max(conn.scanned - 1, start))
            limit = request_line_limit(self.cfg)
            if (conn.line_end < 0 and len(buf) - start > limit) or conn.line_end - start > limit:
                raise http_errors.LimitRequestLine(len(buf) - start, limit)
        if len(buf) > self.limits.max_head_bytes:
            raise http_errors.LimitRequestHeaders("max buffer headers")
        lf = buf.find(b"\n", conn.scanned)
        while lf >= 0:
            if lf == 0 or buf[lf - 1] != 13:
                raise http_errors.InvalidHeader("bare LF as line terminator")
            lf = buf.find(b"\n", lf + 1)

    def _body_frame(self, conn: EdgeConnection, req: Request) -> None:
        """Decide how the body is read (in memory, into a temporary file, chunked, or over
        the limit and not read); refuse a body over the admin's limit at once."""
        # private in gunicorn 27.0.1: the 100-continue flag wsgi.create() acts on, and
        # Body.reader (a LengthReader with .length, or a ChunkedReader).
        expects_continue = req._expected_100_continue
        req._expected_100_continue = False
        reader = req.body.reader
        conn.chunked = None
        conn.spool = None
        conn.body_length = 0
        conn.body_started = time.monotonic()
        conn.body_received = len(conn.buf)
        chunked = isinstance(reader, ChunkedReader)
        limit = None
        if chunked or reader.length > min(self.limits.max_body_bytes, self.limits.max_admin_body_bytes):
            limit = self.limits.body_limit(request_path_info(req.path, req.headers))
        if chunked:
            codings = [
                coding.strip(" \t").lower()
                for name, value in req.headers
                if name == "TRANSFER-ENCODING"
                for coding in value.split(",")
            ]
            if codings != ["chunked"]:
                raise http_errors.UnsupportedTransferCoding(",".join(codings))
            conn.chunked = ChunkedBody(
                limit=limit,
                line_limit=self.cfg.limit_request_field_size or 8190,
                trailer_limit=self.limits.max_head_bytes,
                body=BodySpool(memory_bytes=BODY_MEMORY_BYTES, temp_dir=self._body_temp_dir),
            )
        elif limit is not None and reader.length > limit.max_bytes:
            if not limit.admin:
                # Handed over unread: the postback view answers 413 by the declared length
                # and counts the refusal for its partner; the connection then closes.
                conn.body_length = None
                req.body = UnreadBody()
                req.force_close()
                expects_continue = False
            else:
                # Refused at once; the body is read and dropped on its way (a browser sends
                # it all before it reads the answer, and would not see one sent in a reset).
                conn.drain_limit = max(reader.length - len(conn.buf), CLOSE_DRAIN_BYTES)
                raise body_too_large(limit)
        else:
            conn.body_length = reader.length
            if reader.length > BODY_MEMORY_BYTES:
                conn.spool = BodySpool(memory_bytes=0, temp_dir=self._body_temp_dir)
        conn.state = BODY
        conn.deadline = conn.body_started + self.limits.body_seconds(conn.body_received)
        if expects_continue and not (conn.chunked is None and len(conn.buf) >= (conn.body_length or 0)):
            # A failed send is harmless: the client sends its body anyway, or goes away.
            with contextlib.suppress(OSError):
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def body_read(self, conn: EdgeConnection) -> bool:
        """Take the body out of the buffer (into its temporary file as it arrives, when
        large); hand it to the request once it is complete; False until then."""
        req = conn.req
        if conn.body_length is None:
            return True
        if conn.chunked is not None:
            if not conn.chunked.feed(conn.buf):
                return False
            body = conn.chunked.body
            req.headers = [header for header in req.headers if header[0] != "TRANSFER-ENCODING"]
            req.headers.append(("CONTENT-LENGTH", str(body.size)))
            req.body = body.stream()
        elif conn.spool is not None:
            taken = min(conn.body_length - conn.spool.size, len(conn.buf))
            with memoryview(conn.buf) as view:
                conn.spool.write(view[:taken])
            del conn.buf[:taken]
            if conn.spool.size < conn.body_length:
                return False
            req.body = conn.spool.stream()
        else:
            if len(conn.buf) < conn.body_length:
                return False
            req.body = io.BytesIO(bytes(conn.buf[: conn.body_length]))
            del conn.buf[: conn.body_length]
        return True

    def dispatch(self, conn: EdgeConnection) -> None:
        self.unwatch(conn)
        self.waiting.discard(conn)
        self.keepalived_conns.discard(conn)
        conn.state = APP
        future = self.tpool.submit(self.serve, conn)
        future.add_done_callback(lambda done: self.method_queue.defer(self.finish_request, conn, done))

    def finish_request(self, conn: EdgeConnection, future: Any) -> None:
        """Back in the main loop after a thread answered: keep the connection, or close it."""
        conn.req = None
        self.body_release(conn)
        try:
            keep = not future.cancelled() and future.result() is True
            if keep:
                conn.sock.setblocking(False)
        except Exception:
            keep = False
        if not keep:
            self.close_gracefully(conn)
            return
        conn.requests += 1
        conn.state = IDLE
        now = time.monotonic()
        conn.deadline = now + self.cfg.keepalive
        if not self.alive:
            conn.deadline = min(conn.deadline, now + STOP_LINGER_SECONDS)
        self.waiting.add(conn)
        self.keepalived_conns.add(conn)
        # A pipelined request may be in the buffer already: it is served next.
        self.advance(conn)

    def connections_expire(self) -> None:
        """Close connections past their deadline: a 408 to those in the middle of a request."""
        now = time.monotonic()
        if now < self._next_expiry_scan:
            return
        self._next_expiry_scan = now + EXPIRY_SCAN_SECONDS
        for conn in [conn for conn in self.waiting if conn.deadline <= now]:
            if conn.state == HEAD:
                seconds = f"{self.limits.header_timeout:g}"
                self.refuse(conn, EdgeRefusal(408, "header_timeout", f"The request head took more than {seconds} s"))
            elif conn.state == BODY:
                seconds = f"{round(conn.deadline - conn.body_started, 1):g}"
                self.refuse(conn, EdgeRefusal(408, "body_timeout", f"The request body took more than {seconds} s"))
            else:
                self.close(conn)

    # --- in a pool thread -----------------------------------------------------------

    def serve(self, conn: EdgeConnection) -> bool:
        """Run the application for the connection's complete request; whether the
        connection may carry another one."""
        req = conn.req
        try:
            conn.sock.setblocking(True)
            return bool(self.handle_request(req, conn))
        except StopIteration:
            pass  # the application failed after its answer started: nothing more to send
        except BlockingIOError:  # a write made no progress for SO_SNDTIMEO (set in accept())
            self.log.info("Closing a connection: its client read nothing for %gs", self.limits.send_timeout)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
        except Exception as exc:
            self.handle_error(req, conn.sock, conn.client, exc)
        return False

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's error answer, in JSON; logged without the request's secrets."""
        refusal = refusal_for(exc, cfg=self.cfg, limits=self.limits)
        if refusal.status >= 500:
            if getattr(req, "uri", None):
                self.log.exception("Error handling request %s %s", req.method, url_masked(req.uri))
            else:
                self.log.exception("Error handling request (no URI read)")
        self._answer(client, addr, req, refusal, log_refusal=refusal.status < 500)

    # --- answers and closing -----------------------------------------------------------

    def refuse(self, conn: EdgeConnection, refusal: EdgeRefusal) -> None:
        """Answer `refusal` from the main loop and close the connection."""
        self._answer(conn.sock, conn.client, conn.req, refusal, log_refusal=True)
        self.body_release(conn)
        self.close_gracefully(conn)

    def _answer(self, sock: socket.socket, addr: Any, req: Any, refusal: EdgeRefusal, *, log_refusal: bool) -> None:
        ip = addr[0] if isinstance(addr, tuple) and addr else addr
        if log_refusal:
            self.log.warning(
                "Invalid request from ip=%s: %s %s: %s", ip, refusal.status, refusal.reason, refusal.message
            )
        data = refusal.response()
        if req is not None and getattr(req, "method", None):
            environ = default_environ(req, sock, self.cfg)
            environ["REMOTE_ADDR"] = ip or ""
            response = Response(req, sock, self.cfg)
            response.status = f"{refusal.status} {HTTPStatus(refusal.status).phrase}"
            response.sent = len(data)
            self.log.access(response, req, environ, timedelta(0))
        # A few hundred bytes: the socket's buffer takes them at once, or the client is gone.
        with contextlib.suppress(OSError):
            sock.sendall(data)

    def close_gracefully(self, conn: EdgeConnection) -> None:
        """Shut the write side and drain briefly before closing (RFC 9112 section 9.6), in the poller."""
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close(conn)
            return
        conn.state = CLOSING
        conn.buf.clear()
        conn.drained = 0
        now = time.monotonic()
        conn.deadline = now + CLOSE_LINGER_SECONDS
        if conn.drain_limit > CLOSE_DRAIN_BYTES:  # a refused upload (_body_frame)
            conn.body_started = now
            conn.deadline = now + self.limits.body_timeout
        self.keepalived_conns.discard(conn)
        self.waiting.add(conn)
        self.watch(conn)

    def close(self, conn: EdgeConnection) -> None:
        if conn.state == CLOSED:
            return
        if conn.state != APP:  # a thread may be reading the body
            self.body_release(conn)
        self.unwatch(conn)
        self.waiting.discard(conn)
        self.keepalived_conns.discard(conn)
        conn.state = CLOSED
        conn.readable = None  # it refers back to the connection
        self.nr_conns -= 1
        util.close(conn.sock)

    def body_release(self, conn: EdgeConnection) -> None:
        """Drop the connection's request body and its temporary file, if any."""
        for body in (conn.spool, conn.chunked and conn.chunked.body):
            if body is not None:
                body.close()
        conn.spool = None
        conn.chunked = None

    def watch(self, conn: EdgeConnection) -> None:
        if not conn.registered and conn.state != CLOSED:
            self.poller.register(conn.sock, selectors.EVENT_READ, conn.readable)
            conn.registered = True

    def unwatch(self, conn: EdgeConnection) -> None:
        if conn.registered:
            conn.registered = False
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)
