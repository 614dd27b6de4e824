"""The admin REST API under ``/api/v1``: teams, users, keys, providers, models, usage."""

from corral.api.app import create_api
from corral.api.context import Host

__all__ = ["Host", "create_api"]
