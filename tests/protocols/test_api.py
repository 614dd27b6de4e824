"""The protocols package's surface: every adapter registered, routed and documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import corral.protocols as protocols
from corral.protocols.base import Adapter

DOCS = Path(__file__).parents[2] / "docs" / "protocols.md"


def test_every_protocol_is_one_registered_adapter() -> None:
    assert set(protocols.ADAPTERS) == {"chat", "responses", "messages", "gemini"}
    for name, adapter in protocols.ADAPTERS.items():
        assert isinstance(adapter, Adapter)
        assert adapter.name == name
        assert name in protocols.PROTOCOL_NAMES


@pytest.mark.parametrize(
    ("method", "path", "adapter", "action", "model", "stream"),
    [
        ("POST", "/v1/chat/completions", "chat", "generate", None, None),
        ("POST", "/v1/responses", "responses", "generate", None, None),
        ("POST", "/v1/messages", "messages", "generate", None, None),
        ("POST", "/v1/messages/count_tokens", "messages", "count_tokens", None, None),
        ("POST", "/v1beta/models/m-1:generateContent", "gemini", "generate", "m-1", False),
        ("POST", "/v1/models/m-1:streamGenerateContent", "gemini", "generate", "m-1", True),
        ("POST", "/v1beta/models/m-1:countTokens", "gemini", "count_tokens", "m-1", None),
        ("GET", "/v1beta/models", "gemini", "models", None, None),
    ],
)
def test_routes(
    method: str,
    path: str,
    adapter: str,
    action: str,
    model: str | None,
    stream: bool | None,
) -> None:
    route = protocols.route(method, path)
    assert route is not None
    assert (route.adapter.name, route.action, route.model) == (adapter, action, model)
    if stream is not None:
        assert route.stream is stream


def test_openai_model_list_is_not_a_gemini_route() -> None:
    assert protocols.route("GET", "/v1/models") is None
    assert protocols.route("GET", "/v1/models/sim-standard") is None


def test_every_pair_crosses_through_the_internal_form() -> None:
    for client in protocols.ADAPTERS.values():
        for upstream in protocols.ADAPTERS.values():
            cross = protocols.crossing(client, {upstream.name})
            if client is upstream:
                assert cross is None
            else:
                assert cross is not None
                assert cross.upstream is upstream


def test_the_documentation_names_every_protocol() -> None:
    text = DOCS.read_text()
    for name in protocols.PROTOCOL_NAMES.values():
        assert name in text, name


def test_imports_first_in_a_fresh_interpreter() -> None:
    """Importing the package before the gateway works (no import cycle)."""
    code = "import corral.protocols; import corral.gateway"
    subprocess.run([sys.executable, "-c", code], check=True)
