"""gunicorn configuration, from the environment (`gunicorn -c postback_site/gunicorn.conf.py`)."""

import gc
import os
import shutil
import tempfile
from pathlib import Path

wsgi_app = "postback_site.wsgi:application"


def _settings_check() -> None:
    # The settings read the environment: a mistake there is one line, not the app's traceback.
    import sys

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "postback_site.settings")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        settings.INSTALLED_APPS  # noqa: B018
    except ImproperlyConfigured as exc:
        sys.exit(f"Configuration error: {exc}")


_settings_check()
bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
# gthread, but a request is read whole in the event loop before a thread serves it, under
# GUNICORN_HEADER_TIMEOUT / GUNICORN_BODY_TIMEOUT: slow or idle clients hold no thread.
worker_class = "infra.http.worker.PostbackWorker"
# gunicorn's own error and access lines, with tokens and credential headers masked.
logger_class = "infra.http.logger.PostbackLogger"
# Static files go out through ordinary writes, which GUNICORN_SEND_TIMEOUT bounds; Python's
# socket.sendfile() waits without limit for a client that stops reading.
sendfile = False
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 20
keepalive = 5
# Django's stderr logging is the log; gunicorn's access log would duplicate each line.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# Load the app before forking: workers share the imported code and start faster.
preload_app = True
# Allocations between young-generation collections in a worker (Python's default: 700).
GC_THRESHOLD = 20_000
# Several servers on one machine (tests, benchmarks) must not share a control socket.
control_socket_disable = True

# Workers write Prometheus samples into one directory that /metrics sums; it must be
# set before prometheus_client is imported (preload_app imports the app right after).
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
_metrics_dir_owned = not _metrics_dir
if _metrics_dir_owned:
    _metrics_dir = tempfile.mkdtemp(prefix="postback-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
else:
    # Samples from a previous run would be summed in: start empty.
    Path(_metrics_dir).mkdir(parents=True, exist_ok=True)
    for stale in Path(_metrics_dir).glob("*.db"):
        stale.unlink()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _metrics_dir_owned:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


def when_ready(server):
    # The preloaded application is long-lived: move it out of the collector's sight, so
    # a worker's full collections scan only what requests allocate (shorter pauses, and
    # forked workers keep sharing those pages).
    gc.collect()
    gc.freeze()


def post_fork(server, worker):
    # A request allocates thousands of short-lived objects: collect the young generation
    # less often than every 700 allocations.
    gc.set_threshold(GC_THRESHOLD, 20, 20)


def post_worker_init(worker):
    # Each worker's connection limit counts in /metrics from its start, not from the first
    # request it happens to serve (a worker the kernel gave no request would be missing).
    from infra.metrics import connections_gauges_refresh

    connections_gauges_refresh()
