"""The benchmark's second floor: a bare Django project in one file.

No installed apps, no middleware, one URL, one view doing one `INSERT ... ON CONFLICT`
into a table shaped like a partner's conversions, on a persistent PostgreSQL connection.
bench/postback_bench.py serves it with plain gunicorn gthread under the same shape as
the service (workers x threads) next to the real server:

    BARE_DATABASE=mydb gunicorn -k gthread -w 2 --threads 4 bench.bare_site:application

It is what a postback costs with nothing of the service around it: the gap between the
two is everything the service does for a postback.
"""

import os

import django
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.urls import path

settings.configure(
    DEBUG=False,
    SECRET_KEY="bare-" + "k" * 50,
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    USE_TZ=True,
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ["BARE_DATABASE"],
            "USER": os.environ.get("BARE_DATABASE_USER", "root"),
            "HOST": "127.0.0.1",
            "PORT": "5432",
            "CONN_MAX_AGE": 600,
        }
    },
)
django.setup()

# Into the table bench/postback_bench.py creates in BARE_DATABASE (its BARE_TABLE).
INSERT = (
    "INSERT INTO bare_conversions (conversion_id, raw_data, received_at) VALUES (%s, '{}', now()) "
    "ON CONFLICT (conversion_id) DO NOTHING"
)


def insert(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute(INSERT, [request.GET.get("conversion_id", "")])
    return JsonResponse({"status": "success"})


urlpatterns = [path("bare/insert", insert)]

from django.core.wsgi import get_wsgi_application  # noqa: E402  (after settings.configure)

application = get_wsgi_application()
