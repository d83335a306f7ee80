# One image for every partner: POSTBACK_PARTNERS selects which partners an instance serves.
# Before traffic, the databases are initialised with this image's `python manage.py
# init_partners` (deploy_multi_partner.sh runs it as a Cloud Run job; docs/operations.md "First boot").
# tests/e2e/test_image.py builds this file tree and runs this command without Docker.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8080

WORKDIR /app
# The runtime lock only: every package pinned with its hashes, nothing else installed.
COPY requirements.lock .
RUN pip install --require-hashes -r requirements.lock

COPY . .
# Static files are collected at build time and served by whitenoise; only var/ is writable.
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput --verbosity 0 \
    && useradd --system --uid 10001 --home-dir /app postback \
    && mkdir -p /app/var \
    && chown postback /app/var

USER postback
EXPOSE 8080
# Cloud Run sets $PORT; gunicorn.conf.py binds to it. The delivery worker runs from this
# same image as `python manage.py deliver_postbacks` (cloudrun_manifest --worker).
CMD ["gunicorn", "-c", "postback_site/gunicorn.conf.py"]
