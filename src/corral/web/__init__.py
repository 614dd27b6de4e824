"""The web pages served by the Corral process (for now, the status page)."""

from corral.web.status import status_app

__all__ = ["status_app"]
