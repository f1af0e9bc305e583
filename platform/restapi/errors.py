"""Every error under /api/ as JSON of one shape: {"error": {"code", "message", "fields"?}}."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

from core.errors import ActionError

log = logging.getLogger("restapi")

# DRF's exception classes → the codes of docs/api.md (Errors).
_CODES: dict[int, str] = {
    400: "invalid",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "throttled",
    500: "server_error",
}

API_PREFIX = "/api/"


def error_body(code: str, message: str, fields: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = dict(fields)
    return {"error": error}


def _flatten(detail: Any) -> list[str]:
    if isinstance(detail, Mapping):
        return [m for value in detail.values() for m in _flatten(value)]
    if isinstance(detail, list | tuple):
        return [m for value in detail for m in _flatten(value)]
    return [str(detail)]


def _validation_body(detail: Any) -> dict[str, Any]:
    if isinstance(detail, Mapping):
        fields = {str(key): _flatten(value) for key, value in detail.items()}
        key, messages = next(iter(fields.items()))
        if key == "non_field_errors":
            fields.pop(key)
            message = messages[0]
        else:
            message = f"{key}: {messages[0]}"
        return error_body("invalid", message, fields)
    messages = _flatten(detail)
    return error_body("invalid", messages[0] if messages else "The request is not valid.")


def exception_handler(exc: Exception, context: Mapping[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: map every exception, expected or not, to the JSON error shape."""
    set_rollback()
    headers: dict[str, str] = {}
    if isinstance(exc, ActionError):
        return Response(error_body(exc.code, exc.message, exc.fields), status=exc.status)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    if isinstance(exc, RequestDataTooBig):
        return Response(error_body("too_large", "The request body is too large."), status=413)
    if isinstance(exc, SuspiciousOperation):
        return Response(error_body("invalid", "The request was refused as malformed."), status=400)
    if isinstance(exc, exceptions.APIException):
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))  # type: ignore[attr-defined]
        code = _CODES.get(exc.status_code, "invalid" if exc.status_code < 500 else "server_error")
        if isinstance(exc, exceptions.ValidationError):
            body = _validation_body(exc.detail)
        elif isinstance(exc, exceptions.ParseError):
            body = error_body("invalid", f"The body is not valid JSON: {_flatten(exc.detail)[0]}")
        else:
            body = error_body(code, " ".join(_flatten(exc.detail)))
        return Response(body, status=exc.status_code, headers=headers)
    request = context.get("request")
    log.exception("unexpected error answering %s", getattr(request, "path", "?"), exc_info=exc)
    return Response(
        error_body("server_error", "Something went wrong on the server; it has been logged."),
        status=status.HTTP_500_INTERNAL_SERVER_ERROR,
    )


class ApiJsonErrorsMiddleware:
    """Under /api/, turn errors that escape the views (and Django's 404s) into JSON."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not request.path.startswith(API_PREFIX):
            return None
        if isinstance(exception, Http404):
            return JsonResponse(error_body("not_found", "Not found."), status=404)
        if isinstance(exception, RequestDataTooBig):
            return JsonResponse(error_body("too_large", "The request body is too large."), status=413)
        log.exception("unexpected error answering %s", request.path, exc_info=exception)
        return JsonResponse(
            error_body("server_error", "Something went wrong on the server; it has been logged."),
            status=500,
        )


def _api_or(default: Callable[..., HttpResponse], status_code: int, code: str, message: str) -> Callable[..., HttpResponse]:
    """A Django error handler: JSON under /api/, Django's own page elsewhere."""

    def handler(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.path.startswith(API_PREFIX):
            return JsonResponse(error_body(code, message), status=status_code)
        return default(request, *args, **kwargs)

    return handler


def _django_defaults() -> dict[str, Callable[..., HttpResponse]]:
    from django.views import defaults

    return {
        "400": defaults.bad_request,
        "403": defaults.permission_denied,
        "404": defaults.page_not_found,
        "500": defaults.server_error,
    }


_DEFAULTS = _django_defaults()
# Used by the root URLconf for errors Django handles before any view (a refused Host header,
# a failing middleware) when DEBUG is off.
handler400 = _api_or(_DEFAULTS["400"], 400, "invalid", "The request was refused as malformed.")
handler403 = _api_or(_DEFAULTS["403"], 403, "forbidden", "Forbidden.")
handler404 = _api_or(_DEFAULTS["404"], 404, "not_found", "Not found.")
handler500 = _api_or(
    _DEFAULTS["500"], 500, "server_error", "Something went wrong on the server; it has been logged."
)
