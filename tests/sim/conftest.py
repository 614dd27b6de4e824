"""Fixtures: a real simulator on 127.0.0.1 (uvicorn in a thread) and SDK clients for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
from google import genai
from google.genai import types

from corral.sim import SimConfig
from corral.sim.testing import RunningSim, running_sim

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def sim() -> Iterator[RunningSim]:
    """One simulator for the session, with the example script loaded."""
    with running_sim(SimConfig(seed=7, script=DATA / "agent_script.toml")) as running:
        yield running


@pytest.fixture
def openai_client(sim: RunningSim) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{sim.url}/v1", api_key="sk-sim", max_retries=0, timeout=10
    ) as client:
        yield client


@pytest.fixture
def anthropic_client(sim: RunningSim) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=sim.url, api_key="sk-ant-sim", max_retries=0, timeout=10
    ) as client:
        yield client


@pytest.fixture
def genai_client(sim: RunningSim) -> Iterator[genai.Client]:
    """The google-genai SDK as shipped: ``/v1`` paths, no retries, a 10 s timeout."""
    options = types.HttpOptions(base_url=sim.url, timeout=10_000)
    with genai.Client(api_key="sim-key", http_options=options) as client:
        yield client
