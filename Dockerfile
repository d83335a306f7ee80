# One image for every partner: POSTBACK_PARTNERS selects which partners an instance serves.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8080

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# Static files are collected at build time and served by whitenoise.
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput --verbosity 0 \
    && useradd --system --uid 10001 --home-dir /app postback \
    && mkdir -p /app/var \
    && chown postback /app/var

USER postback
EXPOSE 8080
# Cloud Run sets $PORT; gunicorn.conf.py binds to it.
CMD ["gunicorn", "-c", "postback_site/gunicorn.conf.py"]
