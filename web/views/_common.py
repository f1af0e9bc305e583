"""What every dashboard view shares: login, turning action errors into pages and messages."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render

from core.errors import ActionError, Forbidden, NotFound

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


def dashboard_view(view: View) -> View:
    """Require a logged-in user; show NotFound and Forbidden from reads and actions as pages."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except (NotFound, Forbidden) as exc:
            return error_page(request, exc)

    return login_required(wrapper)  # type: ignore[return-value]


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
