"""Raw HTTP helpers for simulator tests: aiohttp calls and an SSE splitter."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson


@dataclass
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    def events(self) -> list[tuple[str | None, str]]:
        """The SSE events as (event name or None, data text)."""
        events = []
        for block in self.body.decode().split("\n\n"):
            if not block.strip():
                continue
            name = None
            data = []
            for line in block.split("\n"):
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    data.append(line.removeprefix("data: "))
            events.append((name, "\n".join(data)))
        return events


def post(
    base: str,
    path: str,
    body: Any,
    headers: dict[str, str] | None = None,
    *,
    timeout: float = 10.0,
) -> Raw:
    """POST JSON (or raw bytes) and read the whole answer."""

    async def run() -> Raw:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.post(
                base + path,
                data=data,
                headers={"content-type": "application/json", **(headers or {})},
            ) as response,
        ):
            return Raw(response.status, dict(response.headers), await response.read())

    return asyncio.run(run())


def request(method: str, base: str, path: str) -> Raw:
    async def run() -> Raw:
        async with aiohttp.ClientSession() as session, session.request(method, base + path) as r:
            return Raw(r.status, dict(r.headers), await r.read())

    return asyncio.run(run())


def words(count: int, salt: str = "") -> str:
    """``salt`` then ``count`` distinct words of at most four letters (one token each)."""
    letters = "abcdefghijklmnopqrstuvwxyz"

    def word(index: int) -> str:
        return letters[index // 676 % 26] + letters[index // 26 % 26] + letters[index % 26]

    return " ".join([salt, *(word(index) for index in range(count))]).strip()
