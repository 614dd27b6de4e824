"""Corral's one exception tree.

Every error Corral raises on purpose is a ``CorralError``. Each class carries
the HTTP status it becomes at the edge and a stable machine-readable ``code``;
the gateway renders it in the caller's wire protocol (OpenAI or Anthropic
error shape), the admin API as ``{"error": {...}}``, the CLI as a message.

    CorralError
    ├── ConfigError                  bad settings or catalog; raised at start-up
    ├── StoreError                   the database refused or is unreachable (503)
    ├── ClientError                  something the caller can fix (4xx)
    │   ├── InvalidRequest           400 malformed body, bad field
    │   ├── UnknownModel             404 model missing from the catalog
    │   ├── AuthenticationFailed     401 missing, unknown, expired or revoked key
    │   ├── PermissionDenied         403 key may not do this (model, team, admin)
    │   ├── NotFound                 404
    │   ├── Conflict                 409 name already taken
    │   ├── PayloadTooLarge          413
    │   └── RateLimited              429 (carries Retry-After)
    └── UpstreamError                the provider failed us (502/504 unless it sent a status)
        └── UpstreamTimeout          504

Foreign exceptions (the upstream client's, SQLAlchemy, pydantic) are mapped to these at the
edge with ``raise X(...) from exc``; nothing else should escape a handler.
"""

from __future__ import annotations


class CorralError(Exception):
    """Base of every error Corral raises on purpose."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, object]:
        return {"type": self.code, "message": self.message}


class ConfigError(CorralError):
    """The settings or the model catalog are inconsistent; raised at start-up."""

    code = "config_error"


class StoreError(CorralError):
    """The database could not be reached or refused a write."""

    status = 503
    code = "store_unavailable"


class ClientError(CorralError):
    """Something the caller sent that the caller can fix."""

    status = 400
    code = "invalid_request_error"


class InvalidRequest(ClientError):
    """Malformed JSON, a missing field, a value out of range."""


class UnknownModel(ClientError):
    """The requested model is not in the catalog (or not allowed for this key).

    404 with code ``model_not_found``, as OpenAI and Anthropic answer it.
    """

    status = 404
    code = "model_not_found"


class AuthenticationFailed(ClientError):
    """No key, an unknown key, or an expired or revoked one."""

    status = 401
    code = "authentication_error"


class PermissionDenied(ClientError):
    """The key is valid but may not do this."""

    status = 403
    code = "permission_error"


class NotFound(ClientError):
    status = 404
    code = "not_found_error"


class Conflict(ClientError):
    status = 409
    code = "conflict_error"


class PayloadTooLarge(ClientError):
    status = 413
    code = "request_too_large"


class RateLimited(ClientError):
    """A rate, occupancy or budget limit refused the request."""

    status = 429
    code = "rate_limit_error"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class UpstreamError(CorralError):
    """The provider behind a deployment failed: connection, protocol or status."""

    status = 502
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
