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


def test_the_review_docs_example_is_a_gate_corral_accepts() -> None:
    """docs/review.md's `[review]` example loads as settings and passes the start-up check
    of its patterns and globs."""
    import re

    from corral.review.findings import check_config

    text = (Path(__file__).parents[1] / "docs" / "review.md").read_text()
    (block,) = re.findall(r"```toml\n(.*?)```", text, re.S)
    settings = Settings(**tomllib.loads(block))
    check_config(settings.review)
    assert settings.review.rules[1].web is not None
