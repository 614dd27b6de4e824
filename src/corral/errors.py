"""Corral's one exception tree.

Every error Corral raises on purpose is a ``CorralError``. Each class carries
the HTTP status it becomes at the edge and a stable machine-readable ``code``;
the gateway renders it in the caller's wire protocol (OpenAI, Anthropic or
Gemini error shape), the admin API as ``{"error": {...}}``, the CLI as a message.
One class per status: a site that needs another status raises another class,
and passes ``code=`` only where the code tells the caller more than the class.

    CorralError                      500
    ├── ConfigError                  bad settings or catalog; raised at start-up
    ├── ServiceUnavailable           503 a part this request needs is down; may carry
    │   │                                Retry-After (runs refused by this process)
    │   └── StoreError               503 the database refused or is unreachable
    │       └── quota.QuotaUnavailable   the quota backend is unreachable
    ├── ClientError                  something the caller can fix (4xx)
    │   ├── InvalidRequest           400 malformed body, bad field
    │   ├── AuthenticationFailed     401 missing, unknown, expired or revoked key
    │   ├── PermissionDenied         403 key may not do this (team, admin)
    │   ├── UnknownModel             404 model missing from the catalog
    │   │   └── ModelNotAllowed      403 the model exists; this key may not call it
    │   ├── NotFound                 404
    │   ├── MethodNotAllowed         405 the path takes another method
    │   ├── Conflict                 409 name already taken
    │   ├── PayloadTooLarge          413
    │   ├── UnsupportedMediaType     415 Content-Type or Content-Encoding not taken
    │   └── RateLimited              429 a rate or occupancy limit (carries Retry-After)
    │       └── quota.LimitExceeded      one level of the identity chain refused
    │           └── quota.BudgetExceeded 402 its budget is spent
    └── UpstreamError                502 the provider failed us, or relayed: its status
        └── UpstreamTimeout          504

``ModelNotAllowed`` stays an ``UnknownModel``: to this key the model does not exist, and
a handler that catches the one (a run's model check) still catches the other.

An ``UpstreamError`` built from a provider's error answer keeps the provider's
status as data, ``upstream_status``, and is answered with it: a 429 stays a 429 so
the client backs off, a 400 stays a 400 so the client fixes its request. Without
one (connection refused, malformed body) it is Corral's own 502.

``retry_after`` (seconds, or ``None``) is on every error; the gateway, the admin API and
OTLP ingest send it as ``Retry-After``. ``RateLimited`` and ``ServiceUnavailable`` set it.

Foreign exceptions (the upstream client's, SQLAlchemy, pydantic) are mapped to these at the
edge with ``raise X(...) from exc``; nothing else should escape a handler.
"""

from __future__ import annotations


class CorralError(Exception):
    """Base of every error Corral raises on purpose."""

    status: int = 500
    code: str = "internal_error"
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retry_after is not None:
            self.retry_after = retry_after

    def to_dict(self) -> dict[str, object]:
        return {"type": self.code, "message": self.message}


class ConfigError(CorralError):
    """The settings or the model catalog are inconsistent; raised at start-up."""

    code = "config_error"


class ServiceUnavailable(CorralError):
    """Something this request needs is down for now; retry later (``retry_after`` if known)."""

    status = 503
    code = "service_unavailable"


class StoreError(ServiceUnavailable):
    """The database could not be reached or refused a write."""

    code = "store_unavailable"


class ClientError(CorralError):
    """Something the caller sent that the caller can fix."""

    status = 400
    code = "invalid_request_error"


class InvalidRequest(ClientError):
    """Malformed JSON, a missing field, a value out of range."""


class AuthenticationFailed(ClientError):
    """No key, an unknown key, or an expired or revoked one."""

    status = 401
    code = "authentication_error"


class PermissionDenied(ClientError):
    """The key is valid but may not do this."""

    status = 403
    code = "permission_error"


class UnknownModel(ClientError):
    """The requested model is not in the catalog.

    404 with code ``model_not_found``, as OpenAI and Anthropic answer it.
    """

    status = 404
    code = "model_not_found"


class ModelNotAllowed(UnknownModel):
    """The model is in the catalog but this key's allowed models do not include it."""

    status = 403
    code = "model_not_allowed"


class NotFound(ClientError):
    status = 404
    code = "not_found_error"


class MethodNotAllowed(ClientError):
    """The path exists and takes another HTTP method."""

    status = 405
    code = "method_not_allowed"


class Conflict(ClientError):
    status = 409
    code = "conflict_error"


class PayloadTooLarge(ClientError):
    status = 413
    code = "request_too_large"


class UnsupportedMediaType(ClientError):
    """A Content-Type or Content-Encoding the endpoint does not read."""

    status = 415
    code = "unsupported_media_type"


class RateLimited(ClientError):
    """A rate or occupancy limit refused the request; ``retry_after`` says when to retry."""

    status = 429
    code = "rate_limit_error"


class UpstreamError(CorralError):
    """The provider behind a deployment failed: connection, protocol or status.

    ``upstream_status`` is the status the provider answered, when it answered one; the
    error is then answered with that status (see the module docstring), else 502.
    """

    status = 502
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, retry_after=retry_after)
        self.upstream_status = upstream_status
        if upstream_status is not None:
            self.status = upstream_status


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
