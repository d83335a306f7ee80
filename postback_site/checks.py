"""System checks of the site's own arrangement of Django's middleware.

The admin's and the deployment checks look for the session, authentication, messages,
CSRF and clickjacking middleware in MIDDLEWARE; here they sit in PEOPLE_MIDDLEWARE
(infra.middleware), so those checks are silenced and these take their place.
"""

from django.conf import settings
from django.core import checks
from django.utils.module_loading import import_string

PEOPLE_REQUIRED = {
    "django.contrib.sessions.middleware.SessionMiddleware": ("admin.E410", checks.Error),
    "django.contrib.auth.middleware.AuthenticationMiddleware": ("admin.E408", checks.Error),
    "django.contrib.messages.middleware.MessageMiddleware": ("admin.E409", checks.Error),
    "django.middleware.csrf.CsrfViewMiddleware": ("security.W003", checks.Warning),
    "django.middleware.clickjacking.XFrameOptionsMiddleware": ("security.W002", checks.Warning),
}


@checks.register(checks.Tags.security, checks.Tags.admin)
def people_middleware_check(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    if "infra.middleware.PeopleMiddleware" not in settings.MIDDLEWARE:
        messages.append(
            checks.Error(
                "infra.middleware.PeopleMiddleware must be in MIDDLEWARE: it runs PEOPLE_MIDDLEWARE.",
                id="postback_site.E001",
            )
        )
    classes = [import_string(path) for path in getattr(settings, "PEOPLE_MIDDLEWARE", [])]
    for path, (replaces, level) in PEOPLE_REQUIRED.items():
        required = import_string(path)
        if not any(issubclass(cls, required) for cls in classes):
            message = f"'{path}' must be in PEOPLE_MIDDLEWARE (in place of {replaces})."
            messages.append(level(message, id="postback_site.E002"))
    return messages


@checks.register()
def partner_storage_check(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """PARTNER_DATABASE_URL without {name} means one shared PostgreSQL database, a schema
    per partner; SQLite has no schemas, so there it would mix every partner in one file."""
    template = settings.PARTNER_DATABASE_URL
    if "{name}" not in template and template.startswith("sqlite"):
        return [
            checks.Error(
                "PARTNER_DATABASE_URL for SQLite must contain {name} (one file per partner): without it every "
                "partner's conversions would share one file.",
                hint="e.g. sqlite:///var/{name}.sqlite3; for one shared database use PostgreSQL "
                "(postgres://user@host/partners: a schema per partner).",
                id="postback_site.E003",
            )
        ]
    return []
