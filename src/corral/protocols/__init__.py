"""Wire protocols: one adapter per protocol, translation through one internal form.

Each protocol Corral speaks is an :class:`~corral.protocols.base.Adapter`: its routes,
where a request names its model and key, usage and ids in its responses, a stream meter,
its error shapes (and the error event that ends its streams), token counting, its model
list, and the conversion of requests, responses and streams to and from the **internal
form**. ``ADAPTERS`` lists them; the gateway finds a request's adapter with ``route``.

The internal form is the OpenAI Chat Completions shape, held as plain dicts and SSE
chunk bytes: the shape most providers and servers speak, and the one into which every
other protocol's requests map with the fewest losses. Three of its fields are
extensions that vLLM, llama.cpp or DeepSeek already speak: ``reasoning_content``
(reasoning text, on messages and deltas), ``top_k`` and
``usage.prompt_tokens_details.cache_write_tokens``; going to OpenAI's own API the Chat
adapter leaves the first two out.
A request travels client → internal → upstream, and the answer upstream → internal →
client (:class:`Crossing`); a protocol is N = 1 adapter, not one translator per pair.
What a target cannot express is refused by name (``InvalidRequest`` naming the field);
hints that do not change what the model reads are dropped. docs/protocols.md lists every
mapping decision.

Usage is always read from the upstream's own answer (``Crossing.response`` returns the
upstream adapter's ``Outcome``; a stream's outcome is its upstream-side translator's).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import orjson

from corral.protocols.base import (
    Adapter,
    Outcome,
    Route,
    StreamTranslator,
    Turn,
    Usage,
    error_fields,
    upstream_error,
)
from corral.protocols.chat import CHAT
from corral.protocols.gemini import GEMINI
from corral.protocols.messages import MESSAGES
from corral.protocols.responses import RESPONSES

ADAPTERS: dict[str, Adapter] = {a.name: a for a in (CHAT, RESPONSES, MESSAGES, GEMINI)}
"""Every protocol, by name (the names a provider's ``protocols`` list uses)."""

PROTOCOL_NAMES = {
    "chat": "OpenAI Chat Completions",
    "responses": "OpenAI Responses",
    "messages": "Anthropic Messages",
    "gemini": "Google Gemini",
}


def route(method: str, path: str, query: bytes = b"") -> Route | None:
    """The adapter and action ``path`` belongs to, if any protocol serves it."""
    for adapter in ADAPTERS.values():
        found = adapter.route(method, path)
        if found is not None:
            return dataclasses.replace(found, query=query) if query else found
    return None


@dataclass(frozen=True, slots=True)
class Crossing:
    """A call whose client speaks one protocol and whose deployment another."""

    client: Adapter
    upstream: Adapter

    def request(
        self,
        data: dict[str, Any],
        *,
        stream: bool,
        upstream_model: str,
        provider_kind: str,
        default_max: int,
    ) -> bytes:
        """The upstream body (raises ``InvalidRequest`` naming what cannot cross).

        ``stream`` is the call's (Google's protocol says it in the path, not the body)."""
        internal = self.client.to_internal(data)
        if stream:
            internal["stream"] = True
        out = self.upstream.from_internal(
            internal, default_max=default_max, provider_kind=provider_kind
        )
        self.upstream.set_model(out, upstream_model)
        return orjson.dumps(out)

    def response(self, upstream: dict[str, Any], model: str) -> tuple[bytes, Outcome]:
        """The client's body and the upstream's outcome (its usage), from a 2xx answer."""
        outcome = self.upstream.outcome(upstream)
        internal = self.upstream.response_to_internal(upstream, model=model)
        return orjson.dumps(self.client.response_from_internal(internal, model=model)), outcome

    def error(self, status: int, payload: bytes) -> bytes:
        """An upstream error body in the client's error shape; the message is kept."""
        message, kind = error_fields(payload)
        text = message or f"upstream error (HTTP {status})"
        code = kind or "upstream_error"
        if status == 400 and "prompt is too long" in text:
            code = "context_length_exceeded"  # OpenAI's own code, which clients look for
        return self.client.error_body(upstream_error(text, status=status, code=code))

    def stream(self, model: str) -> StreamTranslator:
        """Upstream SSE bytes → the client's SSE bytes, through internal chunks."""
        decode = self.upstream.stream_to_internal(model)
        encode = self.client.stream_from_internal(model)
        if decode is None:
            assert encode is not None  # a crossing has two different protocols
            return encode
        if encode is None:
            return decode
        return _Chained(decode, encode)

    @property
    def label(self) -> str:
        return f"{self.client.name}->{self.upstream.name}"


class _Chained:
    """Two translators in a row; the outcome is the upstream side's (the upstream's usage)."""

    def __init__(self, decode: StreamTranslator, encode: StreamTranslator) -> None:
        self._decode, self._encode = decode, encode
        self.outcome = decode.outcome

    @property
    def done(self) -> bool:
        return self._encode.done

    def feed(self, chunk: bytes) -> bytes:
        return self._encode.feed(self._decode.feed(chunk))

    def close(self) -> bytes:
        return self._encode.feed(self._decode.close()) + self._encode.close()


def crossing(client: Adapter, protocols: frozenset[str] | set[str]) -> Crossing | None:
    """None: a deployment speaking ``protocols`` serves the client natively. Otherwise the
    crossing to the first protocol it speaks (every pair crosses through the internal form;
    Chat first, since it is that form)."""
    if client.name in protocols:
        return None
    target = "chat" if "chat" in protocols else min(protocols)
    return Crossing(client, ADAPTERS[target])


__all__ = [
    "ADAPTERS",
    "CHAT",
    "GEMINI",
    "MESSAGES",
    "PROTOCOL_NAMES",
    "RESPONSES",
    "Adapter",
    "Crossing",
    "Outcome",
    "Route",
    "StreamTranslator",
    "Turn",
    "Usage",
    "crossing",
    "route",
]
