"""The admin API's FastAPI application.

``CorralApp`` hands every ``/api/...`` request to it with the full path, so
routes are declared as ``/api/v1/...``. The OpenAPI document is at
``/api/v1/openapi.json`` and the Swagger page at ``/api/v1/docs``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from corral import __version__
from corral.api import catalog, identity, incidents, quotas, reviews, routing, runs, traces
from corral.api.context import ApiState, Host
from corral.api.errors import install_error_handlers
from corral.api.models import ErrorBody
from corral.identity.service import IdentityService

_DESCRIPTION = """\
Manage Corral's organisation: teams, users and service accounts, keys, budgets
and rate limits; read the providers and models it serves, the usage it has
metered and the trajectories (traces, spans, bodies) it has recorded.

Authenticate with `Authorization: Bearer <key>` or `x-api-key: <key>`. The
organisation admin key manages everything; a team admin key manages its own
team; any other key may read `/api/v1/me`, its own team, user and keys, the models it
may call, its own usage, budgets and spans.
A span or trace the key may not read is answered 404, as one that does not exist.
Errors are `{"error": {"type": ..., "message": ...}}`.
"""

# FastAPI documents a 422 of its own shape on every route unless one is declared: Corral
# never sends it (a field that fails validation is a 400), so the declaration says so.
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Invalid request"},
    401: {"model": ErrorBody, "description": "Missing, unknown, expired or revoked key"},
    403: {"model": ErrorBody, "description": "The key may not do this"},
    404: {"model": ErrorBody, "description": "No such resource"},
    409: {
        "model": ErrorBody,
        "description": "Name already taken, ambiguous, or set in the config file",
    },
    422: {"model": ErrorBody, "description": "Not sent: a field that fails validation is a 400"},
    503: {"model": ErrorBody, "description": "The store or the quota backend is unreachable"},
}


def create_api(host: Host) -> FastAPI:
    """Build the admin API over an application object (its store, key cache, catalog, clock)."""
    api = FastAPI(
        title="Corral admin API",
        version=__version__,
        description=_DESCRIPTION,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
        responses=_ERRORS,
    )
    api.state.corral = ApiState(host=host, service=IdentityService(host.store, host.clock))
    install_error_handlers(api)
    api.include_router(identity.router())
    api.include_router(catalog.router())
    api.include_router(routing.router())
    api.include_router(quotas.router())
    api.include_router(traces.router())
    api.include_router(runs.router())
    api.include_router(incidents.router())
    api.include_router(reviews.router())
    return api
