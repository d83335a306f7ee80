"""The gunicorn worker: requests read whole in an event loop, then served by a thread."""
