"""Persistence: schema, migrations and the ``Store`` that owns the engine."""

from corral.store.db import Store

__all__ = ["Store"]
