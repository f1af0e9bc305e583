"""The one exception family actions raise; the REST API maps each to its HTTP status.

Every message is written for the person at the keyboard: it says what was wrong and, where it
helps, what would be right. `fields` carries per-field problems for forms and the API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class ActionError(Exception):
    """Base of every error an action raises on purpose."""

    code = "invalid"
    status = 400

    def __init__(self, message: str, *, fields: Mapping[str, Sequence[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields: dict[str, list[str]] = {k: list(v) for k, v in (fields or {}).items()}


class Invalid(ActionError):
    """The input is malformed or breaks a rule (400)."""


class Forbidden(ActionError):
    """The actor may see the object but not do this to it (403)."""

    code = "forbidden"
    status = 403


class NotFound(ActionError):
    """No such object, or the actor may not know it exists (404)."""

    code = "not_found"
    status = 404


class Conflict(ActionError):
    """The request clashes with the current state: a taken name, the last owner (409)."""

    code = "conflict"
    status = 409


class TooLarge(ActionError):
    """A value or a collection is over its limit (413)."""

    code = "too_large"
    status = 413


def invalid_field(field: str, message: str) -> Invalid:
    """An `Invalid` about one field, with the same message at the top and on the field."""
    return Invalid(message, fields={field: [message]})
