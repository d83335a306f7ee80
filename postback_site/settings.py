"""Settings for the postback platform, read from the environment (12-factor).

Every variable is optional: with none set the service runs on SQLite files under
`var/` (the embedded default). README.md lists each variable.
"""

import logging
import os
import secrets
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from infra.databases.config import database_settings, database_url_check

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()

VERSION = "1.0.0"


def _embedded_secret_key() -> str:
    """Read the key kept under var/, creating it once (race-safe across workers)."""
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    path = VAR_DIR / "secret_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


# `production` (also assumed on Cloud Run, which sets K_SERVICE) requires a real
# SECRET_KEY and ALLOWED_HOSTS and turns on HTTPS-only defaults; `development` is the
# embedded one-command start.
POSTBACK_ENV = env.str("POSTBACK_ENV", default="production" if os.environ.get("K_SERVICE") else "development")
if POSTBACK_ENV not in {"development", "production"}:
    raise ImproperlyConfigured(f"POSTBACK_ENV must be 'development' or 'production', not '{POSTBACK_ENV}'")
PRODUCTION = POSTBACK_ENV == "production"

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if PRODUCTION:
        # A key generated per instance would differ between instances and vanish on redeploy.
        raise ImproperlyConfigured("SECRET_KEY is required with POSTBACK_ENV=production (50+ random characters)")
    SECRET_KEY = _embedded_secret_key()
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[] if PRODUCTION else ["localhost", "127.0.0.1", "[::1]"])
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS is required with POSTBACK_ENV=production, e.g. postback.example.com")
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "postback_site.admin_site.PostbackAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "postback_site",
    "partners",
    "conversions",
    "publishers",
    "reconciliation",
    "health",
]

MIDDLEWARE = [
    "infra.observability.ObservabilityMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # PEOPLE_MIDDLEWARE, skipped for the views machines call (postbacks): see its module.
    "infra.middleware.PeopleMiddleware",
]
# What serves the admin, the browsable API and their users, in Django's usual order.
PEOPLE_MIDDLEWARE = [
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# Django's checks look for these middleware in MIDDLEWARE only; postback_site.checks
# checks that PEOPLE_MIDDLEWARE has them instead.
SILENCED_SYSTEM_CHECKS = ["admin.E408", "admin.E409", "admin.E410", "security.W002", "security.W003"]

WSGI_APPLICATION = "postback_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Databases -------------------------------------------------------------------
# `default` holds configuration only; each partner's conversions live in the
# partner's own database, registered at runtime by infra.databases.
#
# Every connection of a process (to any database) comes from one bounded broker
# (infra/databases/broker.py): at most DB_MAX_CONNECTIONS per process, in use and
# idle, whatever the number of partners; an instance holds at most
# WEB_CONCURRENCY x DB_MAX_CONNECTIONS. A request uses at most two at once (`default`
# and one partner database), so the limit must exceed the worker's threads.
GUNICORN_THREADS = env.int("GUNICORN_THREADS", default=4)
DB_MAX_CONNECTIONS = env.int("DB_MAX_CONNECTIONS", default=max(10, GUNICORN_THREADS + 2))
if DB_MAX_CONNECTIONS <= GUNICORN_THREADS:
    raise ImproperlyConfigured(
        f"DB_MAX_CONNECTIONS ({DB_MAX_CONNECTIONS}) must be larger than GUNICORN_THREADS ({GUNICORN_THREADS})"
    )
# 0 = no limit per database beyond DB_MAX_CONNECTIONS; N = at most N per database per process.
DB_POOL_MAX_SIZE = env.int("DB_POOL_MAX_SIZE", default=0)
# An idle connection is closed after this many seconds; every connection after DB_CONN_MAX_AGE.
DB_IDLE_SECONDS = env.float("DB_IDLE_SECONDS", default=10.0)
DB_CONN_MAX_AGE = env.int("DB_CONN_MAX_AGE", default=60)
DB_CONNECT_TIMEOUT = env.int("DB_CONNECT_TIMEOUT", default=5)
# A stuck partner database must fail that partner's postbacks fast (503), not hold
# every worker thread; migrations lift these limits (partners.apps).
DB_STATEMENT_TIMEOUT_MS = env.int("DB_STATEMENT_TIMEOUT_MS", default=5000)
DB_LOCK_TIMEOUT_MS = env.int("DB_LOCK_TIMEOUT_MS", default=2000)
# Seconds a partner database that failed to answer is not retried (its postbacks get 503 at once).
DB_BREAKER_SECONDS = env.float("DB_BREAKER_SECONDS", default=2.0)
# Threads of a process that may work on one database at once (all but one: that one
# stays free for the other partners when it hangs; fewer throttles a busy partner whose
# database is healthy), and how long a request waits for one of them while the
# database is answering.
DB_MAX_THREADS_PER_DATABASE = env.int("DB_MAX_THREADS_PER_DATABASE", default=max(1, GUNICORN_THREADS - 1))
DB_BUSY_WAIT_SECONDS = env.float("DB_BUSY_WAIT_SECONDS", default=0.5)
# PostgreSQL is reached through a pooler in transaction mode (PgBouncer): no settings sent
# at connect (put statement_timeout / lock_timeout on the role), no server-side cursors.
DB_TRANSACTION_POOLER = env.bool("DB_TRANSACTION_POOLER", default=False)
# The postback's statements are prepared server-side once per connection; off by default
# behind a transaction pooler (PgBouncer keeps prepared statements from 1.21 on, with
# max_prepared_statements set: then turn it on).
DB_PREPARED_STATEMENTS = env.bool("DB_PREPARED_STATEMENTS", default=not DB_TRANSACTION_POOLER)
SQLITE_BUSY_TIMEOUT = env.int("SQLITE_BUSY_TIMEOUT", default=20)
# New partner databases are copied from a template holding the current schema, named
# this plus the schema version (one per PostgreSQL server, or per SQLite directory).
PARTNER_DATABASE_TEMPLATE = env.str("PARTNER_DATABASE_TEMPLATE", default="postback_template")
DATABASE_OPTIONS = {
    "base_dir": BASE_DIR,
    "connect_timeout": DB_CONNECT_TIMEOUT,
    "statement_timeout_ms": DB_STATEMENT_TIMEOUT_MS,
    "lock_timeout_ms": DB_LOCK_TIMEOUT_MS,
    "prepared_statements": DB_PREPARED_STATEMENTS,
    "transaction_pooler": DB_TRANSACTION_POOLER,
    "sqlite_busy_timeout": SQLITE_BUSY_TIMEOUT,
}


def _database_url(name: str, default: str) -> str:
    """The URL in env `name`, checked now: a typo is one line at start-up, not a traceback later."""
    url = env.str(name, default=default)
    try:
        database_url_check(url.replace("{name}", "partner"))
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} {exc}") from None
    return url


DATABASES = {
    "default": database_settings(
        _database_url("DATABASE_URL", f"sqlite:///{VAR_DIR / 'default.sqlite3'}"),
        **DATABASE_OPTIONS,
    )
}
PARTNER_DATABASE_URL = _database_url("PARTNER_DATABASE_URL", f"sqlite:///{VAR_DIR}/{{name}}.sqlite3")
DATABASE_ROUTERS = ["infra.databases.PartnerDatabaseRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Postback behaviour ----------------------------------------------------------
# Comma-separated partner codes this instance serves; empty serves every partner.
POSTBACK_PARTNERS = env.list("POSTBACK_PARTNERS", default=[])
# How long a worker trusts its cached partner configuration before re-reading it.
PARTNER_CACHE_SECONDS = env.float("PARTNER_CACHE_SECONDS", default=5.0)
# An endpoint that matches no partner reloads the configuration at most this often per process.
PARTNER_NOT_FOUND_SECONDS = env.float("PARTNER_NOT_FOUND_SECONDS", default=1.0)
# Number of reverse proxies in front of us whose X-Forwarded-For entries we trust.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
# Retry-After (seconds) sent with a 503 when a partner database is unreachable.
POSTBACK_RETRY_AFTER = env.int("POSTBACK_RETRY_AFTER", default=30)
# Request limits, checked before any database work (413 / 400).
POSTBACK_MAX_BODY_BYTES = env.int("POSTBACK_MAX_BODY_BYTES", default=65536)
POSTBACK_MAX_PARAMS = env.int("POSTBACK_MAX_PARAMS", default=100)
POSTBACK_MAX_PARAM_NAME_LENGTH = env.int("POSTBACK_MAX_PARAM_NAME_LENGTH", default=100)
POSTBACK_MAX_PARAM_VALUE_LENGTH = env.int("POSTBACK_MAX_PARAM_VALUE_LENGTH", default=2048)
# Admin uploads (a network's CSV report; 100,000 rows are about 7 MB): the HTTP worker
# takes bodies up to this size under /admin/ only (413 past it), writing those over 1 MiB
# to a temporary file as they arrive (infra/http/).
ADMIN_UPLOAD_MAX_BYTES = env.int("ADMIN_UPLOAD_MAX_BYTES", default=64 << 20)
# Django then keeps an uploaded file in memory up to this size, and in a temporary file
# (FILE_UPLOAD_TEMP_DIR: the system's) past it; Django's defaults, written out because the
# upload path depends on them. DATA_UPLOAD_MAX_MEMORY_SIZE bounds the form's other fields.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
FILE_UPLOAD_TEMP_DIR = None
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
# A signed postback carrying X-Postback-Timestamp is refused this many seconds away from now.
POSTBACK_SIGNATURE_TOLERANCE_SECONDS = env.int("POSTBACK_SIGNATURE_TOLERANCE_SECONDS", default=300)
# Shared daily quota counter; without it the counter lives in each partner's database.
# Far from a partner's daily limit, each process adds to the shared counter in batches.
QUOTA_BATCH_SIZE = env.int("QUOTA_BATCH_SIZE", default=50)
QUOTA_FLUSH_SECONDS = env.float("QUOTA_FLUSH_SECONDS", default=1.0)
# How often a process writes the refused and invalid postbacks it counted (the audit
# counts, conversions/ingest/refusals.py); QUOTA_FLUSH_SECONDS's value unless set.
REFUSAL_FLUSH_SECONDS = env.float("REFUSAL_FLUSH_SECONDS", default=QUOTA_FLUSH_SECONDS)
# Reconciliation against a network's report API: attempts per request (429s, timeouts,
# 5xx) and the first backoff between them (doubled each time, Retry-After honoured up to the cap).
RECONCILE_MAX_ATTEMPTS = env.int("RECONCILE_MAX_ATTEMPTS", default=5)
RECONCILE_BACKOFF_SECONDS = env.float("RECONCILE_BACKOFF_SECONDS", default=1.0)
RECONCILE_BACKOFF_MAX_SECONDS = env.float("RECONCILE_BACKOFF_MAX_SECONDS", default=60.0)
# The background worker's reconciliation: runs in progress at once per worker process,
# and how often it looks for queued runs and due daily schedules.
RECONCILE_WORKER_THREADS = env.int("RECONCILE_WORKER_THREADS", default=2)
RECONCILE_POLL_SECONDS = env.float("RECONCILE_POLL_SECONDS", default=5.0)
# On SIGTERM, how long the worker waits for its background jobs' current step.
WORKER_STOP_SECONDS = env.float("WORKER_STOP_SECONDS", default=8.0)
REDIS_URL = env.str("REDIS_URL", default="")
REDIS_KEY_PREFIX = env.str("REDIS_KEY_PREFIX", default="postback")
REDIS_TIMEOUT = env.float("REDIS_TIMEOUT", default=0.5)
# After Redis failed to answer, how long the quota is counted in the partner databases instead.
REDIS_BREAKER_SECONDS = env.float("REDIS_BREAKER_SECONDS", default=10.0)

# --- HTTPS and cookies (on by default in production) -------------------------------
# Behind a trusted proxy (Cloud Run's front end) the scheme arrives in X-Forwarded-Proto.
if TRUSTED_PROXY_COUNT > 0:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=PRODUCTION)
# Platform health probes speak plain HTTP to the container.
SECURE_REDIRECT_EXEMPT = [r"^health$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=PRODUCTION)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=PRODUCTION)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=PRODUCTION)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=PRODUCTION)

# Benchmark only: serves bench/urls.py, the service's URLs plus bench/minimal_view.py at
# /bench/insert (bench/postback_bench.py).
BENCH_MINIMAL_VIEW = env.bool("BENCH_MINIMAL_VIEW", default=False)
ROOT_URLCONF = "bench.urls" if BENCH_MINIMAL_VIEW else "postback_site.urls"

# --- Internationalisation --------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files (served by whitenoise) -----------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- REST framework --------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# `make run` (the embedded default) turns this on: the read API (`/partner/<path>/stats`,
# `/conversions`) answers a request from this machine itself (loopback peer, a localhost
# Host, no proxy header) without a token, so a newcomer's first curl works. Off unless
# asked; never with production settings or behind a proxy.
LOOPBACK_READS_WITHOUT_TOKEN = env.bool("LOOPBACK_READS_WITHOUT_TOKEN", default=False)
if LOOPBACK_READS_WITHOUT_TOKEN and PRODUCTION:
    raise ImproperlyConfigured("LOOPBACK_READS_WITHOUT_TOKEN cannot be on with POSTBACK_ENV=production")
if LOOPBACK_READS_WITHOUT_TOKEN and TRUSTED_PROXY_COUNT:
    raise ImproperlyConfigured(
        "LOOPBACK_READS_WITHOUT_TOKEN cannot be on with TRUSTED_PROXY_COUNT: requests come through a proxy"
    )

# OpenAPI schema at /api/schema/, docs at /api/docs/ (assets from the sidecar app,
# served by us: the docs page works with no internet access).
SPECTACULAR_SETTINGS = {
    "TITLE": "Postback platform API",
    "DESCRIPTION": "Partners send postbacks; analysts read conversions and stats (token or admin session).",
    "VERSION": VERSION,
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The schemes a client can use; the embedded default's loopback reads are not one of them.
    "AUTHENTICATION_WHITELIST": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Several `status` fields with their own choices: each named once.
    "ENUM_NAME_OVERRIDES": {
        "PostbackAnswerEnum": "conversions.openapi.STORED_ANSWERS",
        "PostbackErrorEnum": ["error"],
        "ConversionStatusEnum": "partners.lifecycle.STATUSES",
    },
}

# --- Observability ---------------------------------------------------------------
# `GET /metrics` answers a `Bearer METRICS_TOKEN` or a client in METRICS_ALLOWED_IPS (IPs or CIDRs).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=[])
# Project id for Cloud Logging trace links (`projects/<id>/traces/<trace>`).
GOOGLE_CLOUD_PROJECT = env.str("GOOGLE_CLOUD_PROJECT", default="")

# --- Logging ---------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
LOG_FILE = env.str("LOG_FILE", default="")
# `plain` for people, `json` for Cloud Logging (one object per line).
LOG_FORMAT = env.str("LOG_FORMAT", default="plain").lower()
if LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'plain' or 'json', not '{LOG_FORMAT}'")
_log_handlers = ["console"]
# No format here uses the caller's file/line or thread names; not collecting them
# halves the cost of a log record (the step logs write ~20 per postback). The process
# id stays: gunicorn's own log lines print it.
logging._srcfile = None
logging.logThreads = False
logging.logMultiprocessing = False
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"()": "infra.observability.PlainFormatter"},
        "json": {"()": "infra.observability.CloudLoggingFormatter"},
    },
    "handlers": {
        # Buffers a request's lines and writes them to stderr in one call when it ends.
        "console": {"class": "infra.observability.RequestBufferedHandler", "formatter": LOG_FORMAT},
    },
    "root": {"handlers": _log_handlers, "level": LOG_LEVEL},
    "loggers": {
        "django": {"handlers": _log_handlers, "level": "INFO", "propagate": False},
    },
}
if LOG_FILE:
    Path(LOG_FILE).parent.mkdir(parents=True, exist_ok=True)
    LOGGING["handlers"]["file"] = {
        # Watched: an external logrotate can move the file under several workers.
        "class": "logging.handlers.WatchedFileHandler",
        "filename": LOG_FILE,
        "formatter": LOG_FORMAT,
        "encoding": "utf-8",
    }
    _log_handlers.append("file")

# --- Admin -----------------------------------------------------------------------
# Base URL partners call (for the postback URL shown in the admin); empty = the admin's own host.
PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="")

# --- Forwarding to publishers (the deliver_postbacks worker) ----------------------
# Destinations on loopback, private or link-local addresses are refused unless this is set.
OUTBOUND_ALLOW_PRIVATE = env.bool("OUTBOUND_ALLOW_PRIVATE", default=False)
DELIVERY_CONCURRENCY = env.int("DELIVERY_CONCURRENCY", default=32)  # sends in flight per worker process
DELIVERY_BATCH_SIZE = env.int("DELIVERY_BATCH_SIZE", default=128)  # claimed at a time (4 waves of sends)
DELIVERY_LEASE_SECONDS = env.float("DELIVERY_LEASE_SECONDS", default=90.0)  # > 4 waves x 15 s (publishers.checks)
DELIVERY_POLL_SECONDS = env.float("DELIVERY_POLL_SECONDS", default=1.0)
DELIVERY_CONNECT_TIMEOUT = env.float("DELIVERY_CONNECT_TIMEOUT", default=5.0)
DELIVERY_READ_TIMEOUT = env.float("DELIVERY_READ_TIMEOUT", default=10.0)
DELIVERY_RESPONSE_MAX_BYTES = env.int("DELIVERY_RESPONSE_MAX_BYTES", default=4096)
# Seconds to wait after the 1st, 2nd, ... failed attempt; after the last, the delivery has failed.
DELIVERY_BACKOFF_SECONDS = [
    int(s) for s in env.list("DELIVERY_BACKOFF_SECONDS", default=["60", "300", "1800", "7200", "43200", "86400"])
]
PUBLISHER_PAUSE_AFTER_FAILURES = env.int("PUBLISHER_PAUSE_AFTER_FAILURES", default=10)
DELIVERY_METRICS_PORT = env.int("DELIVERY_METRICS_PORT", default=0)  # the worker's own /metrics (0: none)

# --- Email (publisher reports) ----------------------------------------------------
# django-environ's EMAIL_URL: smtp+tls://user:password@smtp.example.com:587, consolemail://, ...
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="reports@localhost")

# --- Channel health (health/) --------------------------------------------------------
# How often the background worker evaluates every active partner (and sends what its
# incidents owe people); the address of the admin that notifications link to.
HEALTH_CHECK_SECONDS = env.float("HEALTH_CHECK_SECONDS", default=60.0)
ADMIN_BASE_URL = env.str("ADMIN_BASE_URL", default="http://localhost:8000")
# Where incidents are told, besides the account managers of the partner (by email): an
# operations address, and a webhook (a JSON body Slack and generic receivers accept),
# signed (X-Postback-Signature, HMAC-SHA256 of the timestamp and body) when a secret is set.
ALERT_EMAIL_TO = env.list("ALERT_EMAIL_TO", default=[])
ALERT_WEBHOOK_URL = env.str("ALERT_WEBHOOK_URL", default="")
ALERT_WEBHOOK_SECRET = env.str("ALERT_WEBHOOK_SECRET", default="")
