"""Outbound HTTP to publishers: only http(s), only public addresses, pooled, bounded.

A destination is resolved once per send and every address it resolves to is checked;
the connection then goes to the checked address (the URL's host name is kept for the
Host header, and on https for SNI and certificate verification), so a name that
resolves elsewhere a moment later (DNS rebinding) cannot redirect it. Redirects are not
followed, a response is read up to a cap, and no request carries a secret into a log.
"""

import ipaddress
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import urllib3
from django.conf import settings
from urllib3.exceptions import HTTPError, LocationParseError

from infra.errors import error_first_line

# Cloud metadata endpoints: refused even with OUTBOUND_ALLOW_PRIVATE.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address) for address in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
POOLS_KEPT = 256

Resolver = Callable[[str, int], list[str]]


class OutboundRefused(Exception):
    """A destination we do not send to, saying why."""


@dataclass(frozen=True)
class Destination:
    scheme: str
    host: str
    port: int
    address: str  # the checked address the connection goes to
    target: str  # path and query

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class OutboundResult:
    status_code: int | None
    excerpt: str
    error: str
    duration_ms: int

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def system_resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise OutboundRefused(f"cannot resolve {host}: {exc}") from exc
    return list(dict.fromkeys(info[4][0] for info in infos))


def address_refusal(address: str, *, allow_private: bool) -> str | None:
    """Why `address` is not a destination, or None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata address"
    if allow_private:
        return None
    for test, what in (
        (ip.is_loopback, "a loopback"),
        (ip.is_link_local, "a link-local"),
        (ip.is_private, "a private"),
        (ip.is_multicast, "a multicast"),
        (ip.is_unspecified, "an unspecified"),
        (ip.is_reserved, "a reserved"),
        (not ip.is_global, "a non-public"),
    ):
        if test:
            return f"{ip} is {what} address (set OUTBOUND_ALLOW_PRIVATE to allow it)"
    return None


def destination_resolve(url: str, *, allow_private: bool, resolve: Resolver = system_resolve) -> Destination:
    """The checked destination of `url`; OutboundRefused saying why it is not one."""
    try:
        parts = urllib3.util.parse_url(url)
    except LocationParseError as exc:
        raise OutboundRefused(f"not a URL: {exc}") from exc
    scheme = (parts.scheme or "").lower()
    if scheme not in ("http", "https"):
        raise OutboundRefused(f"only http and https are sent, not {scheme or 'a URL without scheme'}")
    if not parts.host:
        raise OutboundRefused("the URL has no host")
    if parts.auth:
        raise OutboundRefused("credentials in the URL are not sent")
    host = parts.host.strip("[]")
    port = parts.port or (443 if scheme == "https" else 80)
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        addresses = resolve(host, port)
    if not addresses:
        raise OutboundRefused(f"{host} resolves to no address")
    for address in addresses:
        refusal = address_refusal(address, allow_private=allow_private)
        if refusal:
            raise OutboundRefused(f"{host} refused: {refusal}" if host != address else refusal)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query is not None else "")
    return Destination(scheme=scheme, host=host, port=port, address=addresses[0], target=target)


class OutboundClient:
    """Pooled connections per checked destination; thread-safe."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_response_bytes: int,
        allow_private: bool,
        pool_size: int = 10,
        resolve: Resolver = system_resolve,
    ):
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self.max_response_bytes = max_response_bytes
        self.allow_private = allow_private
        self.pool_size = pool_size
        self.resolve = resolve
        self._pools: OrderedDict[tuple, urllib3.HTTPConnectionPool] = OrderedDict()
        self._lock = threading.Lock()

    def _pool(self, destination: Destination) -> urllib3.HTTPConnectionPool:
        key = (destination.scheme, destination.address, destination.port, destination.host)
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return pool
            options = {"timeout": self.timeout, "retries": False, "maxsize": self.pool_size, "block": False}
            if destination.scheme == "https":
                pool = urllib3.HTTPSConnectionPool(
                    destination.address,
                    destination.port,
                    server_hostname=destination.host,
                    assert_hostname=destination.host,
                    cert_reqs="CERT_REQUIRED",
                    **options,
                )
            else:
                pool = urllib3.HTTPConnectionPool(destination.address, destination.port, **options)
            self._pools[key] = pool
            while len(self._pools) > POOLS_KEPT:
                _key, old = self._pools.popitem(last=False)
                old.close()
            return pool

    def send(self, *, method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> OutboundResult:
        """Send one request; never raises for the destination's faults (they are the result's error)."""
        started = time.monotonic()

        def result(status: int | None, excerpt: str = "", error: str = "") -> OutboundResult:
            return OutboundResult(status, excerpt, error, int((time.monotonic() - started) * 1000))

        try:
            destination = destination_resolve(url, allow_private=self.allow_private, resolve=self.resolve)
        except OutboundRefused as exc:
            return result(None, error=f"refused: {exc}")
        request_headers = {"Host": destination.host_header, "User-Agent": "postback-forwarder/1.0", **headers}
        try:
            response = self._pool(destination).urlopen(
                method,
                destination.target,
                body=body,
                headers=request_headers,
                redirect=False,
                retries=False,
                preload_content=False,
                assert_same_host=False,
            )
        except HTTPError as exc:
            return result(None, error=f"{exc.__class__.__name__}: {_reason(exc)}")
        try:
            data = response.read(self.max_response_bytes)
        except HTTPError as exc:
            response.close()
            return result(response.status, error=f"reading the response: {_reason(exc)}")
        if len(data) >= self.max_response_bytes:
            response.close()  # the rest is never read: this connection is not reused
        else:
            response.release_conn()
        return result(response.status, excerpt=data[:500].decode("utf-8", "replace"))

    def close(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()


def outbound_client(*, pool_size: int = 10) -> OutboundClient:
    """The client every send to a publisher goes through (the delivery worker's, the admin's
    test send), from settings: DELIVERY_CONNECT_TIMEOUT, DELIVERY_READ_TIMEOUT,
    DELIVERY_RESPONSE_MAX_BYTES, OUTBOUND_ALLOW_PRIVATE; `pool_size` connections kept per destination."""
    return OutboundClient(
        connect_timeout=settings.DELIVERY_CONNECT_TIMEOUT,
        read_timeout=settings.DELIVERY_READ_TIMEOUT,
        max_response_bytes=settings.DELIVERY_RESPONSE_MAX_BYTES,
        allow_private=settings.OUTBOUND_ALLOW_PRIVATE,
        pool_size=pool_size,
    )


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or exc
    if not str(reason).strip():
        return exc.__class__.__name__
    return error_first_line(reason if isinstance(reason, BaseException) else Exception(reason))[:300]
