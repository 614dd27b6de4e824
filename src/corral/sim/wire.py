"""Pieces every protocol renderer shares: usage, response metadata, SSE frames."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

_WORD = re.compile(r"\s*\S+")
_ARGUMENT_CHUNK = 32


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage before it takes a protocol's shape.

    ``prompt`` counts every prompt token, cached or not (OpenAI's
    ``prompt_tokens``); Anthropic's ``input_tokens`` is ``prompt`` minus the
    cache reads and writes. ``output`` includes ``reasoning``.
    """

    prompt: int
    cache_read: int
    cache_write: int
    output: int
    reasoning: int

    @property
    def uncached_input(self) -> int:
        return self.prompt - self.cache_read - self.cache_write


@dataclass(frozen=True, slots=True)
class Meta:
    """Identity of one answer: its id, its creation time and the model name echoed."""

    response_id: str
    created: int
    model: str
    request_id: str


@dataclass(frozen=True, slots=True)
class Frame:
    """One piece of a streamed body and the output tokens it stands for (for pacing)."""

    data: bytes
    tokens: int = 0


def sse_data(payload: Any, tokens: int = 0) -> Frame:
    """An unnamed SSE event, as OpenAI Chat Completions sends them."""
    return Frame(b"data: " + orjson.dumps(payload) + b"\n\n", tokens)


def sse_event(name: str, payload: Any, tokens: int = 0) -> Frame:
    """A named SSE event (``event:`` then ``data:``), as Responses and Messages send them."""
    return Frame(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n", tokens)


def text_chunks(text: str, words: int, tokens: int) -> list[tuple[str, int]]:
    """Split ``text`` into deltas of ``words`` words, each with its share of ``tokens``.

    The shares (by length, for pacing) add up to ``tokens`` exactly, and the
    deltas joined give back ``text`` exactly.
    """
    ends = [match.end() for match in _WORD.finditer(text)][words - 1 :: words]
    return _split(text, ends, tokens)


def argument_chunks(arguments: str, tokens: int) -> list[tuple[str, int]]:
    """Split tool-call arguments into the small pieces providers stream, with token shares."""
    if not arguments:
        return [("", tokens)]
    return _split(arguments, list(range(_ARGUMENT_CHUNK, len(arguments), _ARGUMENT_CHUNK)), tokens)


def _split(text: str, ends: list[int], tokens: int) -> list[tuple[str, int]]:
    """Cut ``text`` at ``ends``; each piece gets its share of ``tokens`` by length."""
    if not ends or ends[-1] < len(text):
        ends.append(len(text))
    chunks: list[tuple[str, int]] = []
    start = given = 0
    for end in ends:
        if end > start:
            share = tokens * end // len(text) - given
            chunks.append((text[start:end], share))
            given += share
        start = end
    return chunks
