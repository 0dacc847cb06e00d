"""The few errors the hub raises on purpose, each with a stable code and an HTTP status."""

from __future__ import annotations

from typing import Any


class HubError(Exception):
    status_code = 400
    code = "BAD_REQUEST"

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class ValidationFailed(HubError):
    status_code = 400
    code = "VALIDATION_FAILED"


class Unprocessable(HubError):
    status_code = 422
    code = "UNPROCESSABLE"


class Unauthorized(HubError):
    status_code = 401
    code = "UNAUTHORIZED"


class Forbidden(HubError):
    status_code = 403
    code = "FORBIDDEN"


class NotFound(HubError):
    status_code = 404
    code = "NOT_FOUND"


class Conflict(HubError):
    status_code = 409
    code = "CONFLICT"


class ServiceUnavailable(HubError):
    status_code = 503
    code = "SERVICE_UNAVAILABLE"
