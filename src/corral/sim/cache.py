"""Simulated prompt caching: prefix hashes in a bounded LRU with a time to live.

OpenAI caches automatically: a prompt whose prefix of at least 1024 tokens
was seen recently reports that prefix as ``cached_tokens``, in multiples of
128; Gemini's implicit caching works the same way with exact counts
(``cachedContentTokenCount``). Anthropic caches explicitly: blocks marked ``cache_control`` are
breakpoints; the first request writes the prefix up to the last breakpoint
(``cache_creation_input_tokens``), later requests read the longest prefix
already written (``cache_read_input_tokens``), looking back over earlier block
boundaries as Anthropic does.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from corral.sim.request import Prompt

_OPENAI_GRANULE = 128


@dataclass(frozen=True, slots=True)
class CacheUsage:
    """Prompt tokens read from and written to the cache."""

    read: int = 0
    written: int = 0


NO_CACHE = CacheUsage()


class PrefixCache:
    """Which prompt prefixes are cached, by hash; lives on the app, not in a module."""

    def __init__(self, *, min_tokens: int, ttl_s: float, max_entries: int) -> None:
        self.min_tokens = min_tokens
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def openai(
        self, namespace: str, prompt: Prompt, now: float, *, granule: int = _OPENAI_GRANULE
    ) -> CacheUsage:
        """Automatic caching: report the longest seen prefix, then store every prefix.

        The prefix read is rounded down to a multiple of ``granule`` tokens
        (OpenAI's 128; Gemini's implicit caching reports exact counts, 1).
        """
        if self.max_entries == 0 or prompt.total < max(self.min_tokens, 1):
            return NO_CACHE
        hashes, ends = _prefixes(namespace, prompt)
        read = 0
        for index in range(len(hashes) - 1, -1, -1):
            if ends[index] >= self.min_tokens and self._hit(hashes[index], now):
                read = ends[index] // granule * granule
                break
        for index, digest in enumerate(hashes):
            if ends[index] >= self.min_tokens:
                self._store(digest, now)
        return CacheUsage(read=read)

    def anthropic(self, namespace: str, prompt: Prompt, now: float) -> CacheUsage:
        """Explicit caching: read the longest written prefix, write up to the last breakpoint."""
        if self.max_entries == 0 or not prompt.marks:
            return NO_CACHE
        hashes, ends = _prefixes(namespace, prompt)
        last = prompt.marks[-1]
        if ends[last - 1] < self.min_tokens:
            return NO_CACHE
        read = 0
        for index in range(last - 1, -1, -1):
            if ends[index] >= self.min_tokens and self._hit(hashes[index], now):
                read = ends[index]
                self._store(hashes[index], now)
                break
        for mark in prompt.marks:
            if ends[mark - 1] >= self.min_tokens:
                self._store(hashes[mark - 1], now)
        return CacheUsage(read=read, written=ends[last - 1] - read)

    def _hit(self, digest: bytes, now: float) -> bool:
        stored = self._entries.get(digest)
        if stored is None:
            return False
        if now - stored > self.ttl_s:
            del self._entries[digest]
            return False
        return True

    def _store(self, digest: bytes, now: float) -> None:
        # A use refreshes the entry's lifetime, as both providers do.
        self._entries[digest] = now
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def _prefixes(namespace: str, prompt: Prompt) -> tuple[list[bytes], list[int]]:
    """Chained hashes of each prefix of segments, and the tokens each prefix ends at."""
    chain = hashlib.blake2b(namespace.encode(), digest_size=16)
    hashes: list[bytes] = []
    ends: list[int] = []
    total = 0
    for text, tokens in zip(prompt.texts, prompt.tokens, strict=True):
        chain.update(b"\x1e")
        chain.update(text.encode(errors="surrogatepass"))
        hashes.append(chain.copy().digest())
        total += tokens
        ends.append(total)
    return hashes, ends
