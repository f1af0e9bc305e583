"""The error pages the router answers with itself, each carrying a short code and the request id."""

from __future__ import annotations

import html

REASONS = {
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

# code -> (status, what the page says). The code also goes into the X-Paas-Error header and
# the access log line, so an operator can grep for it.
ERRORS: dict[str, tuple[int, str]] = {
    "bad_request": (400, "The request is malformed."),
    "no_such_app": (404, "There is no app at this address."),
    "method_not_allowed": (405, "This method is not supported here."),
    "request_timeout": (408, "The request took too long to arrive."),
    "url_too_long": (414, "The request target is too long."),
    "headers_too_large": (431, "The request headers are too large or too many."),
    "app_not_answering": (502, "The app is not answering."),
    "app_reset": (502, "The app closed the connection before answering."),
    "no_web_process": (503, "This app has no web process running."),
    "maintenance": (503, "This app is down for maintenance."),
    "app_timeout": (504, "The app took too long to answer."),
}


def error_response(status: int, code: str, message: str, request_id: str, *, keep_alive: bool) -> bytes:
    """Build a complete HTTP/1.1 error response with a small HTML page."""
    reason = REASONS.get(status, "Error")
    body = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{status} {reason}</title></head>"
        f"<body><h1>{status} {reason}</h1><p>{html.escape(message)}</p>"
        f"<p><small>code {code} &middot; request {html.escape(request_id)}</small></p></body></html>\n"
    )
    data = body.encode("utf-8")
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\n"
        f"X-Paas-Error: {code}\r\n"
        f"X-Request-Id: {request_id}\r\n"
        "Cache-Control: no-store\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode("latin-1") + data
