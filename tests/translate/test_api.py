"""The package's public surface: what it exports is what its docstring documents."""

from __future__ import annotations

import subprocess
import sys

import corral.translate

EXPORTED = {
    "ChatToMessagesStream",
    "ChatToResponsesStream",
    "MessagesToChatStream",
    "anthropic_error_to_openai",
    "chat_response_to_messages",
    "chat_response_to_responses",
    "chat_to_messages",
    "messages_response_to_chat",
    "messages_to_chat",
    "openai_error_to_anthropic",
    "responses_to_chat",
}


def test_exported_names() -> None:
    assert set(corral.translate.__all__) == EXPORTED
    for name in EXPORTED:
        assert getattr(corral.translate, name) is not None


def test_every_export_is_documented_in_the_package_docstring() -> None:
    doc = corral.translate.__doc__ or ""
    for name in EXPORTED:
        assert name in doc, name


def test_imports_first_in_a_fresh_interpreter() -> None:
    """Importing the package before the gateway works (no import cycle)."""
    code = "import corral.translate; import corral.gateway"
    subprocess.run([sys.executable, "-c", code], check=True)
