"""Log in and out, change password (Django's auth views), and the API tokens page."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse, reverse_lazy
from django.views.decorators.http import require_http_methods, require_POST

from core import actions
from core.errors import ActionError, NotFound
from core.models import ApiToken
from web import reads
from web.views._common import acting_user, back_with, dashboard_view, run_action


class LoginView(auth_views.LoginView):
    template_name = "web/registration/login.html"
    redirect_authenticated_user = True
    next_page = reverse_lazy("web:apps")  # type: ignore[assignment]


class LogoutView(auth_views.LogoutView):
    next_page = reverse_lazy("web:login")  # type: ignore[assignment]


class PasswordChangeView(auth_views.PasswordChangeView):
    template_name = "web/registration/password_change.html"
    success_url = reverse_lazy("web:tokens")

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return {**super().get_context_data(**kwargs), "nav": "account"}

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        messages.success(self.request, "Your password was changed.")
        return response


@dashboard_view
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    """List the user's API tokens; POST creates one and shows it this once."""
    created: str | None = None
    if request.method == "POST":
        description = request.POST.get("description", "").strip()
        try:
            _token, created = actions.token_create(actor=acting_user(request), description=description)
        except ActionError as exc:
            return back_with(request, reverse("web:tokens"), error=exc)
    context = {
        "nav": "account",
        "tokens": reads.token_list(acting_user(request)),
        "created": created,
    }
    return render(request, "web/account/tokens.html", context, status=201 if created else 200)


@dashboard_view
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    def revoke() -> None:
        token = ApiToken.objects.filter(pk=token_id, user=acting_user(request)).first()
        if token is None:
            raise NotFound(f"Token {token_id} not found.")
        actions.token_revoke(actor=acting_user(request), token=token)

    return run_action(request, reverse("web:tokens"), "The token was revoked; it no longer works.",
                      revoke)
