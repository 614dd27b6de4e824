"""Corral: the control plane that runs coding agents as platform workloads."""

__version__ = "0.1.0"

__all__ = ["__version__"]
