"""Who may call the read API: an API token, an admin session, or, on the embedded default,
this machine itself.

With LOOPBACK_READS_WITHOUT_TOKEN (set by `make run`; refused with production settings
or a trusted proxy) a request without credentials whose TCP peer is a loopback address,
whose Host is localhost, 127.0.0.1 or [::1], and that carries no proxy header, reads as a
local reader: what `curl http://localhost:8000/...` on the machine running `make run`
does. A request through a proxy (X-Forwarded-For, Forwarded, X-Real-IP) is not the
machine's own, whatever its peer address; the Host check keeps a web page from reaching
it through a name it made resolve to 127.0.0.1 (DNS rebinding), whatever ALLOWED_HOSTS is.

Every 401 says how to get a token (TOKEN_HELP).
"""

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from rest_framework.authentication import BaseAuthentication, SessionAuthentication, TokenAuthentication
from rest_framework.request import Request

from infra.addresses import address_parse

VIEW_PERMISSION = "conversions.view_partnerconversion"
TOKEN_HELP = (
    "Send an API token: 'Authorization: Token <key>'. An administrator creates one with "
    "'python manage.py drf_create_token <username>' (or in the admin, Auth Token > Tokens) for a user "
    f"holding {VIEW_PERMISSION} (the Analysts and Account managers groups have it)."
)
PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


class LocalReader(AnonymousUser):
    """The machine's own user of the embedded default: may read every partner, nothing else."""

    username = "local"
    is_active = True
    is_superuser = True  # no partner scope applies (partners.selectors)

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_anonymous(self) -> bool:
        return False

    def has_perm(self, perm: str, obj: object = None) -> bool:
        return perm == VIEW_PERMISSION

    def __str__(self) -> str:
        return self.username


LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


def request_is_local(request: Request) -> bool:
    """Whether the request comes from this machine directly: a loopback peer, asking for
    this machine by a local name (not a name a web page made resolve to 127.0.0.1), with no
    proxy header."""
    meta = request.META
    if any(meta.get(header) for header in PROXY_HEADERS):
        return False
    address = address_parse(meta.get("REMOTE_ADDR"))
    if address is None or not address.is_loopback:
        return False
    host = meta.get("HTTP_HOST", "").lower()
    hostname = host if host.endswith("]") else host.rsplit(":", 1)[0]
    return hostname in LOCAL_HOSTS


class LoopbackAuthentication(BaseAuthentication):
    """After the token and the session: a request without credentials from the machine itself."""

    def authenticate(self, request: Request) -> tuple[LocalReader, None] | None:
        if not settings.LOOPBACK_READS_WITHOUT_TOKEN or "HTTP_AUTHORIZATION" in request.META:
            return None
        return (LocalReader(), None) if request_is_local(request) else None


# A bad token is refused by TokenAuthentication before this class is asked: credentials
# that were sent are always checked.
READ_AUTHENTICATION = (TokenAuthentication, SessionAuthentication, LoopbackAuthentication)
