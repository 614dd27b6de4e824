"""Provider-style rate limits: a request bucket and a token bucket per model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    level: float
    stamp: float


@dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of one admission: ``retry_after_s`` is set when refused."""

    retry_after_s: float | None
    headers: list[tuple[bytes, bytes]]


class RateLimiter:
    """Token buckets refilled continuously, ``limit`` per minute, one pair per model."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def admit(
        self, model: str, tokens: int, *, rpm: int, tpm: int, now: float, anthropic: bool
    ) -> Admission:
        """Take one request and ``tokens`` tokens from ``model``'s buckets, or refuse.

        A request larger than the whole token budget drains a full bucket
        rather than waiting forever.
        """
        wanted: list[tuple[str, _Bucket, int, float]] = []
        for unit, limit, amount in (("requests", rpm, 1), ("tokens", tpm, tokens)):
            if limit > 0:
                bucket = self._refill((model, unit), limit, now)
                wanted.append((unit, bucket, limit, float(min(amount, limit))))
        waits = [
            (cost - bucket.level) * 60.0 / limit
            for _, bucket, limit, cost in wanted
            if cost > bucket.level
        ]
        if not waits:
            for _unit, bucket, _limit, cost in wanted:
                bucket.level -= cost
        levels = {unit: (limit, bucket.level) for unit, bucket, limit, _ in wanted}
        return Admission(max(waits) if waits else None, _headers(levels, anthropic=anthropic))

    def _refill(self, key: tuple[str, str], limit: int, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(limit), float(now))
        else:
            bucket.level = min(float(limit), bucket.level + (now - bucket.stamp) * limit / 60.0)
            bucket.stamp = now
        return bucket


def _headers(levels: dict[str, tuple[int, float]], *, anthropic: bool) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    for unit, (limit, level) in levels.items():
        remaining = str(max(0, int(level))).encode()
        if anthropic:
            headers.append((f"anthropic-ratelimit-{unit}-limit".encode(), str(limit).encode()))
            headers.append((f"anthropic-ratelimit-{unit}-remaining".encode(), remaining))
        else:
            headers.append((f"x-ratelimit-limit-{unit}".encode(), str(limit).encode()))
            headers.append((f"x-ratelimit-remaining-{unit}".encode(), remaining))
    return headers
