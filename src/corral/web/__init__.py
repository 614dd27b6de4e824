"""The web pages served by the Corral process (for now, the status page)."""

from corral.web.status import StatusPage

__all__ = ["StatusPage"]
