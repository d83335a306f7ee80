"""The middleware that serves people, skipped for the endpoints that machines call.

Sessions, CSRF, authentication, messages, clickjacking headers, static files and the
slash redirect serve the admin, the browsable API and its token or session users. A
partner's postback needs none of them and pays for each on every request, so they run
as one group, `PeopleMiddleware`, last in MIDDLEWARE, configured as
PEOPLE_MIDDLEWARE; a view marked with `@machine_endpoint` (the postback view) is
answered by the middleware before the group only (observability, security headers).
Everything else goes through the group exactly as if its members were listed in
MIDDLEWARE: their `process_view`, `process_template_response` and `process_exception`
hooks run in Django's order.

Which view a path leads to is resolved once per path (the URLconf is static), so the
decision costs a dictionary lookup.
"""

from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import MiddlewareNotUsed
from django.core.handlers.exception import convert_exception_to_response
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, get_resolver
from django.utils.module_loading import import_string

View = TypeVar("View", bound=Callable[..., Any])


def machine_endpoint(view: View) -> View:
    """Mark a view (function, or the result of `as_view()`) as called by machines only:
    it is served without PEOPLE_MIDDLEWARE (no session, user, CSRF check or messages)."""
    view.machine_endpoint = True  # type: ignore[attr-defined]
    return view


@lru_cache(maxsize=4096)
def _machine_path(urlconf: str, path_info: str) -> bool:
    try:
        match = get_resolver(urlconf).resolve(path_info)
    except Resolver404:
        return False
    return getattr(match.func, "machine_endpoint", False)


@receiver(setting_changed)
def _urlconf_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "ROOT_URLCONF":
        _machine_path.cache_clear()


def machine_request(request: HttpRequest) -> bool:
    """Whether `request` goes to a `@machine_endpoint` view."""
    return _machine_path(getattr(request, "urlconf", None) or settings.ROOT_URLCONF, request.path_info)


class PeopleMiddleware:
    """PEOPLE_MIDDLEWARE as one middleware, bypassed for `@machine_endpoint` views."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response
        self._view_hooks: list[Callable] = []
        self._template_hooks: list[Callable] = []
        self._exception_hooks: list[Callable] = []
        # As django.core.handlers.base.BaseHandler.load_middleware builds its chain.
        handler = convert_exception_to_response(get_response)
        for path in reversed(settings.PEOPLE_MIDDLEWARE):
            try:
                instance = import_string(path)(handler)
            except MiddlewareNotUsed:
                continue
            if hasattr(instance, "process_view"):
                self._view_hooks.insert(0, instance.process_view)
            if hasattr(instance, "process_template_response"):
                self._template_hooks.append(instance.process_template_response)
            if hasattr(instance, "process_exception"):
                self._exception_hooks.append(instance.process_exception)
            handler = convert_exception_to_response(instance)
        self._people = handler

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not machine_request(request):
            request._through_people_middleware = True
            return self._people(request)
        # What CommonMiddleware does that a machine's request needs too: the Host header
        # checked against ALLOWED_HOSTS before anything runs (DisallowedHost: a 400), and
        # a Content-Length on the answer, so that it is not sent chunked.
        request.get_host()
        response = self.get_response(request)
        if not response.streaming and not response.has_header("Content-Length"):
            response.headers["Content-Length"] = str(len(response.content))
        return response

    def process_view(self, request: HttpRequest, view_func: Callable, view_args: Any, view_kwargs: Any) -> Any:
        if getattr(request, "_through_people_middleware", False):
            for hook in self._view_hooks:
                response = hook(request, view_func, view_args, view_kwargs)
                if response is not None:
                    return response
        return None

    def process_template_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if getattr(request, "_through_people_middleware", False):
            for hook in self._template_hooks:
                response = hook(request, response)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if getattr(request, "_through_people_middleware", False):
            for hook in self._exception_hooks:
                response = hook(request, exception)
                if response is not None:
                    return response
        return None
