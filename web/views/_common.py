"""What every dashboard view shares: login, turning action errors into pages and messages."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render, resolve_url

from core.errors import ActionError, Forbidden, Invalid, NotFound

if TYPE_CHECKING:
    from django.contrib.auth.models import User

View = TypeVar("View", bound=Callable[..., HttpResponse])


def acting_user(request: HttpRequest) -> User:
    """The logged-in user (every view behind `dashboard_view` has one) as actions want it."""
    assert request.user.is_authenticated
    return request.user


def is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


def error_page(request: HttpRequest, exc: ActionError) -> HttpResponse:
    """A full page (or, for htmx, a fragment) that says what went wrong, with the error's status."""
    template = "web/partials/error.html" if is_htmx(request) else "web/error.html"
    return render(
        request, template, {"status": exc.status, "message": exc.message}, status=exc.status
    )


def _login_again(request: HttpRequest) -> HttpResponse:
    """Send a visitor who is not (or no longer) logged in to the login page.

    An htmx poll must not swap the login page into a fragment: it is told to load the login page
    as a whole page (HX-Redirect), to come back to the page the poll was made from.
    """
    if is_htmx(request):
        page = urlsplit(request.headers.get("HX-Current-URL", "")).path or "/"
        response = HttpResponse(status=200)
        response["HX-Redirect"] = f"{resolve_url(settings.LOGIN_URL)}?{urlencode({'next': page})}"
        return response
    return redirect_to_login(request.get_full_path())


def _has_nul(request: HttpRequest, kwargs: dict[str, Any]) -> bool:
    """Whether any input holds a NUL character, which PostgreSQL text can neither store nor
    compare: such input is refused here rather than failing deep inside a query."""
    values = [v for v in kwargs.values() if isinstance(v, str)]
    for query in (request.GET, request.POST):
        for _, items in query.lists():
            values.extend(items)
    return any("\x00" in value for value in values)


def dashboard_view(view: View) -> View:
    """Require a logged-in user; show NotFound and Forbidden from reads and actions as pages."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return _login_again(request)
        if _has_nul(request, kwargs):
            return error_page(request, Invalid("Input may not contain NUL characters."))
        try:
            return view(request, *args, **kwargs)
        except (NotFound, Forbidden) as exc:
            return error_page(request, exc)

    return wrapper  # type: ignore[return-value]


def back_with(
    request: HttpRequest, url: str, *, error: ActionError | None = None, success: str = ""
) -> HttpResponse:
    """Post/Redirect/Get: go back to `url` with a message saying how the change went."""
    if error is not None:
        # Actions write whole sentences; the per-field notes ("Taken.") only repeat them.
        messages.error(request, error.message)
    elif success:
        messages.success(request, success)
    return HttpResponseRedirect(url, status=303)


def run_action(
    request: HttpRequest, url: str, success: str | Callable[[Any], str],
    action: Callable[[], object],
) -> HttpResponse:
    """Call an action; redirect to `url` with its outcome. Not-found and forbidden become pages.

    `success` is the message, or a function of the action's result that makes it.
    """
    try:
        result = action()
    except (NotFound, Forbidden) as exc:
        return error_page(request, exc)
    except ActionError as exc:
        return back_with(request, url, error=exc)
    return back_with(request, url, success=success if isinstance(success, str) else success(result))
