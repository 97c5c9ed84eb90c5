"""Problem errors (RFC 9457): raised anywhere in a pipeline, rendered as JSON by the web layer.

They are plain exceptions so the pipelines stay usable without Flask.
"""
from __future__ import annotations


class ProblemError(Exception):
    """An error a client caused or must know about, with its HTTP status."""

    status = 500
    title = "Internal server error"
    slug = "internal"

    def __init__(self, detail: str, *, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.headers = headers or {}  # extra response headers, e.g. Retry-After

    def to_dict(self) -> dict:
        body = {
            "type": f"https://errors.fashion-services.example/{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.field is not None:
            body["field"] = self.field
        return body


class BadRequest(ProblemError):
    status, title, slug = 400, "Bad request", "bad-request"


class NotFound(ProblemError):
    status, title, slug = 404, "Not found", "not-found"


class PayloadTooLarge(ProblemError):
    status, title, slug = 413, "Payload too large", "too-large"


class UnsupportedMediaType(ProblemError):
    status, title, slug = 415, "Unsupported media type", "unsupported-media-type"


class Unprocessable(ProblemError):
    status, title, slug = 422, "Unprocessable content", "unprocessable"


class UpstreamError(ProblemError):
    status, title, slug = 502, "Upstream fetch failed", "upstream-failed"


class NotReady(ProblemError):
    status, title, slug = 503, "Service not ready", "not-ready"


class Overloaded(ProblemError):
    """This worker has as much work in flight as its memory budget allows; retry shortly."""

    status, title, slug = 503, "Service busy", "overloaded"

    def __init__(self, detail: str, *, retry_after: int):
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class UpstreamTimeout(ProblemError):
    status, title, slug = 504, "Upstream timed out", "upstream-timeout"


def problem_for_status(status: int, detail: str) -> ProblemError:
    """The ProblemError for an HTTP status another service answered with."""
    for cls in ProblemError.__subclasses__():
        if cls.status == status and cls is not Overloaded:
            return cls(detail)
    error = ProblemError(detail)
    error.status = status
    return error
