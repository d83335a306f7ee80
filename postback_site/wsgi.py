"""WSGI entry point (gunicorn postback_site.wsgi).

One WSGI middleware in front of Django: a Content-Type whose charset is not a text
encoding (`charset=rot13`, `base64`, an unknown name) makes Django fail while building
the request, before any view or error handler (a 500). The charset is taken off the
Content-Type here and named in the environ (request_meta.CHARSET_REFUSED), so the postback answers a
400 naming it and every other page reads the request as UTF-8.
"""

import os

from django.core.wsgi import get_wsgi_application

from infra.request_meta import charset_checked

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "postback_site.settings")

application = charset_checked(get_wsgi_application())
