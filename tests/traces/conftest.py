"""Trajectory tests drive the same live gateway fixture as the gateway tests."""

from tests.gateway.conftest import corral

__all__ = ["corral"]
