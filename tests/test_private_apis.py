"""The private APIs of Django, gunicorn and the standard library that the service relies on.

Each is named where it is used (a comment with the version it was checked against);
this test checks every one still exists with the shape used, so an upgrade that removes
or renames one fails here, naming it, instead of in production.
"""

import inspect
import logging

import django
import gunicorn
import pytest
from django.contrib.admin import ModelAdmin
from django.db.backends.postgresql.base import DatabaseWrapper as PostgresWrapper
from django.db.backends.sqlite3.base import DatabaseWrapper as SqliteWrapper
from django.utils import log as django_log
from gunicorn.http import body as gunicorn_body
from gunicorn.http import message as gunicorn_message
from gunicorn.http import wsgi as gunicorn_wsgi
from gunicorn.workers.gthread import ThreadWorker


def _source(thing) -> str:
    return inspect.getsource(thing)


# (where we use it, what must hold, how to check it)
PRIVATE_APIS = [
    (
        "infra/http/worker.py",
        "gunicorn's gthread ThreadWorker keeps nr_conns, _accepting, tpool, poller and method_queue",
        lambda: all(
            name in _source(ThreadWorker)
            for name in ("self.nr_conns", "self._accepting", "self.tpool", "self.poller", "self.method_queue")
        ),
    ),
    (
        "infra/http/worker.py",
        "gunicorn's ThreadWorker has set_accept_enabled, handle_request, wait_for_and_dispatch_events, is_parent_alive",
        lambda: all(
            callable(getattr(ThreadWorker, name, None))
            for name in ("set_accept_enabled", "handle_request", "wait_for_and_dispatch_events", "is_parent_alive")
        ),
    ),
    (
        "infra/http/worker.py",
        "gunicorn's Request sets the private _expected_100_continue flag and wsgi.create() reads it",
        lambda: (
            "self._expected_100_continue = True" in _source(gunicorn_message)
            and "_expected_100_continue" in _source(gunicorn_wsgi)
        ),
    ),
    (
        "infra/http/worker.py",
        "gunicorn's parser constants CHUNK_EXT_RE, TOKEN_RE, MAX_REQUEST_LINE and its body readers",
        lambda: (
            all(hasattr(gunicorn_body, name) for name in ("CHUNK_EXT_RE", "ChunkedReader", "LengthReader"))
            and all(hasattr(gunicorn_message, name) for name in ("TOKEN_RE", "MAX_REQUEST_LINE"))
        ),
    ),
    (
        "conversions/ingest/respond.py",
        "django.utils.log.log_response skips a response whose _has_been_logged is set",
        lambda: "_has_been_logged" in _source(django_log.log_response),
    ),
    (
        "conversions/admin/base.py",
        "ModelAdmin._changeform_view runs inside changeform_view's transaction",
        lambda: (
            callable(getattr(ModelAdmin, "_changeform_view", None))
            and "_changeform_view" in _source(ModelAdmin.changeform_view)
        ),
    ),
    (
        "infra/databases/backends/",
        "the database wrappers close their connection in _close()",
        lambda: (
            all(
                "def _close" in _source(wrapper.__mro__[1]) or hasattr(wrapper, "_close")
                for wrapper in (
                    PostgresWrapper,
                    SqliteWrapper,
                )
            )
            and "self._close()" in _source(django.db.backends.base.base.BaseDatabaseWrapper.close)
        ),
    ),
    (
        "postback_site/settings.py",
        "logging._srcfile (None: log records skip the caller lookup)",
        lambda: hasattr(logging, "_srcfile") and "if _srcfile:" in _source(logging.Logger._log),
    ),
]


@pytest.mark.parametrize("used_in, api, holds", PRIVATE_APIS, ids=[api for _, api, _ in PRIVATE_APIS])
def test_each_private_api_we_rely_on_is_still_there(used_in, api, holds):
    assert holds(), (
        f"{used_in} relies on a private API that changed in Django {django.__version__} / "
        f"gunicorn {gunicorn.__version__}: {api}"
    )
