"""The metered gateway: OpenAI Chat Completions, OpenAI Responses and Anthropic Messages."""

from corral.gateway.proxy import Gateway
from corral.gateway.upstream import Upstream

__all__ = ["Gateway", "Upstream"]
