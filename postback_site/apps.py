from django.apps import AppConfig


class PostbackSiteConfig(AppConfig):
    name = "postback_site"
    verbose_name = "Postback site"

    def ready(self) -> None:
        from postback_site import checks  # noqa: F401  (registers the system checks)
