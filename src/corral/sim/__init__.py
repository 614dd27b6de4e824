"""Corral's provider simulator: OpenAI Chat and Responses, Anthropic Messages, Google Gemini.

It answers with realistic token counts, latency, rate limits, faults and
scripted conversations, and always says it is a simulator. See
``docs/simulator.md``.
"""

from __future__ import annotations

from corral.sim.app import SimApp, create_sim_app
from corral.sim.config import STANDARD_MODELS, SimConfig
from corral.sim.options import (
    FAULT_KINDS,
    FaultKind,
    FaultSpec,
    ModelOptions,
    parse_faults,
    parse_model_name,
)
from corral.sim.script import Script, load_script, parse_script
from corral.sim.server import SimServer, bind_socket, serve_sim

__all__ = [
    "FAULT_KINDS",
    "STANDARD_MODELS",
    "FaultKind",
    "FaultSpec",
    "ModelOptions",
    "Script",
    "SimApp",
    "SimConfig",
    "SimServer",
    "bind_socket",
    "create_sim_app",
    "load_script",
    "parse_faults",
    "parse_model_name",
    "parse_script",
    "serve_sim",
]
