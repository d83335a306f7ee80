"""Browsers ask every page for /favicon.ico: it is answered, so no 404 is logged each time."""

import logging
from pathlib import Path

from django.contrib.staticfiles import finders


def test_favicon_is_answered_without_a_warning(client, caplog):
    caplog.set_level(logging.INFO)
    response = client.get("/favicon.ico")
    assert (response.status_code, response["Location"]) == (301, "/static/partners/favicon.png")
    assert Path(finders.find("partners/favicon.png")).read_bytes().startswith(b"\x89PNG")  # served by whitenoise
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
