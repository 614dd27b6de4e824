"""Helpers for fixtures that start real services (PostgreSQL, Redis) for the suite."""

from __future__ import annotations

import os
import socket
from typing import NoReturn

import pytest


def missing_service(service: str, reason: str) -> NoReturn:
    """Skip a test that needs ``service``; on CI (``CI=true``) fail it instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{service} is required on CI: {reason}")
    pytest.skip(f"{service} is not available: {reason}")


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
