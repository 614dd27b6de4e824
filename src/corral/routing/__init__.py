"""Routing: the model catalog, tiers, route policy and fallback."""

from corral.routing.catalog import Catalog, Deployment, Prices, Provider

__all__ = ["Catalog", "Deployment", "Prices", "Provider"]
