"""The admin REST API under ``/api/v1``: teams, users, keys, providers, models, usage."""

from corral.api.app import create_api
from corral.api.context import Host
from corral.api.guard import ApiGuard


def guarded_api(host: Host) -> ApiGuard:
    """The API as served: ``ApiGuard`` (key and body size first) in front of ``create_api``."""
    api = create_api(host)
    return ApiGuard(api, host, public=(api.openapi_url, api.docs_url))


__all__ = ["ApiGuard", "Host", "create_api", "guarded_api"]
