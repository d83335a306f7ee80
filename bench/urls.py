"""The service's URLs plus the benchmark's floor: a minimal view at /bench/insert.

Served instead of postback_site.urls only when BENCH_MINIMAL_VIEW is set
(bench/postback_bench.py); never in production. The floor is served as a postback is,
without the middleware that serves people.
"""

from django.urls import path

from bench.minimal_view import minimal_insert
from infra.middleware import machine_endpoint
from postback_site.urls import handler400, handler403, handler404, handler500
from postback_site.urls import urlpatterns as service_urlpatterns

urlpatterns = [*service_urlpatterns, path("bench/insert", machine_endpoint(minimal_insert))]

__all__ = ["handler400", "handler403", "handler404", "handler500", "urlpatterns"]
