"""The reference docs are generated from the code; these tests fail when they drift."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from corral.docgen import EXAMPLE_TOML, generated
from corral.routing import Catalog
from corral.settings import ModelConfig, ProviderConfig, Settings

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("name", ["configuration.md", "cli.md"])
def test_generated_docs_are_up_to_date(name: str) -> None:
    """docs/configuration.md and docs/cli.md equal what `make docs` would write."""
    path = DOCS / name
    expected = generated(DOCS)[path]
    assert path.is_file(), f"{path} is missing; run `make docs`"
    assert path.read_text(encoding="utf-8") == expected, f"{path} is stale; run `make docs`"


@pytest.mark.parametrize("model", [Settings, ProviderConfig, ModelConfig])
def test_every_setting_has_a_description(model: type[BaseModel]) -> None:
    undocumented = [n for n, f in model.model_fields.items() if not (f.description or "").strip()]
    assert undocumented == [], f"{model.__name__} fields without a description: {undocumented}"


def test_the_example_corral_toml_is_valid() -> None:
    """The example in docs/configuration.md loads and builds a catalog."""
    settings = Settings(**tomllib.loads(EXAMPLE_TOML))
    catalog = Catalog.from_settings(settings, sim_url=None)
    assert set(catalog.providers) == {"openai", "anthropic", "local"}
    assert catalog.resolve("claude-sonnet").upstream_model == "claude-sonnet-4-5"
