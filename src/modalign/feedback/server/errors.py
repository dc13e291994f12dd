"""Errors of the annotation app; each carries the HTTP status it maps to and, where one is to
blame, the request field it names. Raised by plain functions (no FastAPI needed to test them)."""

from __future__ import annotations


class AnnotationError(Exception):
    """Base class: `status` is the HTTP status, `field` the request field at fault (if any)."""

    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    @property
    def page_message(self) -> str:
        """The message as a page shows it: with the field at fault, when there is one."""
        return f"{self.message} (field: {self.field})" if self.field else self.message

    def to_json(self) -> dict:
        out = {"detail": self.message}
        if self.field:
            out["field"] = self.field
        return out


class BadRequest(AnnotationError):
    status = 400


class Unauthorized(AnnotationError):
    status = 401


class Forbidden(AnnotationError):
    status = 403


class NotFound(AnnotationError):
    status = 404


class Conflict(AnnotationError):
    status = 409


class TooLarge(AnnotationError):
    status = 413


class UnsupportedMediaType(AnnotationError):
    status = 415


class TooManyRequests(AnnotationError):
    status = 429


class InvalidField(AnnotationError):
    """The body parsed but a field is wrong: 422, naming the field."""

    status = 422
