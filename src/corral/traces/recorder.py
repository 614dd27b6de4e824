"""The record pipeline: spans journaled on the request path, stored in batches off it.

``Recorder.record`` costs one ``os.write``; a background task rotates the
journal every ``flush_interval`` (or sooner when a batch is full) and hands
the batch to the ``SpanWriter`` in a worker thread (bodies to the blob store,
duplicates marked, roll-ups kept, ``ON CONFLICT DO NOTHING`` on the span id,
so a replayed journal never duplicates a row). A batch the store refuses
stays on disk and in memory and is retried; nothing is dropped.

Backpressure: ``check_capacity`` is what OTLP ingest asks before accepting a
payload. Past ``queue_max`` spans waiting, or while the store is failing, it
raises a 429/503 with Retry-After so the client holds on to its data and
retries; what was accepted is already in the journal. The gateway's own
records are never refused: a model call that happened is always recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.errors import RateLimited, StoreError
from corral.store import Store
from corral.traces.blobs import BlobBackend
from corral.traces.journal import Journal, Segment
from corral.traces.spans import metered
from corral.traces.writer import SpanWriter

log = logging.getLogger(__name__)

_ORPHAN_SCAN_EVERY = 30.0
_RETRY_DELAY = 1.0


class Recorder:
    """Journals spans synchronously and writes them to the store in batches."""

    def __init__(
        self,
        store: Store,
        *,
        journal_dir: Path,
        batch_size: int = 1000,
        flush_interval: float = 0.2,
        blobs: BlobBackend | None = None,
        max_body_bytes: int = 4 * 1024 * 1024,
        queue_max: int = 50_000,
    ) -> None:
        self._store = store
        self.writer = SpanWriter(
            store,
            blobs=blobs,
            max_body_bytes=max_body_bytes,
        )
        self._queue_max = queue_max
        self._retry = False  # the last batch failed: the next may find some of it stored
        self._journal_dir = journal_dir
        self._batch_size = batch_size
        self._interval = flush_interval
        self._journal: Journal | None = None
        self._backlog: deque[Segment] = deque()
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()  # one flush at a time: the backlog is popped in order
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.stored = 0
        self.replayed = 0
        self.failures = 0
        self.refused = 0  # OTLP payloads answered 429/503 by check_capacity
        self.last_lag_s = 0.0  # accepted → stored, for the oldest span of the last batch
        self.rate = 0.0  # spans stored per second, over the last batches
        # Called (from a worker thread) with each batch of replayed rows, once stored.
        self.on_replay: Callable[[list[dict[str, Any]]], None] | None = None

    # -- request path ---------------------------------------------------------

    def record(self, *rows: dict[str, Any]) -> None:
        """Make spans durable now (one write) and queue them for the store."""
        journal = self._journal
        if journal is None:
            raise RuntimeError("the recorder is not started")
        journal.append(*rows)
        if len(journal.current.records) >= self._batch_size:
            self._wake.set()

    def check_capacity(self, spans: int) -> None:
        """Refuse a payload of ``spans`` that would overfill the queue (``RateLimited``, 429)
        or arrives while the store fails (``StoreError``, 503); either carries how long to
        wait before retrying."""
        pending = self.pending
        if self._retry:
            self.refused += 1
            raise StoreError(
                f"the span store is failing ({self.failures} failed writes); {pending} spans "
                "are waiting in the journal. Retry later.",
                retry_after=5.0,
            )
        if pending + spans > self._queue_max:
            self.refused += 1
            drain = max(1.0, min(30.0, pending / self.rate)) if self.rate else 5.0
            raise RateLimited(
                f"the ingest queue is full ({pending} spans waiting, ingest_queue_max "
                f"{self._queue_max}); retry after {drain:.0f} s",
                code="ingest_queue_full",
                retry_after=round(drain),
            )

    @property
    def pending(self) -> int:
        """Spans journaled but not yet stored."""
        current = len(self._journal.current.records) if self._journal else 0
        return current + sum(len(s.records) for s in self._backlog)

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        self._journal = Journal(self._journal_dir)
        await asyncio.to_thread(self.replay_orphans)
        self._task = asyncio.create_task(self._run(), name="corral-recorder")

    async def stop(self) -> None:
        if self._task is not None:
            # Let a batch in flight finish rather than cancel it half-way through a thread.
            self._stopping = True
            self._wake.set()
            await self._task
            self._task = None
        if self._journal is not None:
            try:
                await self.flush()
            finally:
                self._journal.close()
                for segment in self._backlog:  # left on disk for the next start to replay
                    segment.close(delete=False)
                self._backlog.clear()
                self._journal = None

    async def flush(self) -> None:
        """Store everything journaled so far (the backlog first); raise if the store refuses."""
        if self._journal is None:
            return
        async with self._flushing:
            segment = self._journal.rotate()
            if segment is not None:
                self._backlog.append(segment)
            while self._backlog:
                segment = self._backlog[0]
                try:
                    await asyncio.to_thread(self._insert, segment.records, self._retry)
                except BaseException:
                    self._retry = True
                    raise
                self._retry = False
                self.last_lag_s = time.monotonic() - segment.first_at
                self._backlog.popleft()
                segment.close(delete=True)

    # -- background -----------------------------------------------------------

    async def _run(self) -> None:
        next_scan = time.monotonic() + _ORPHAN_SCAN_EVERY
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self.flush()
            except Exception:
                self.failures += 1
                log.exception("storing %d spans failed; retrying from the journal", self.pending)
                await asyncio.sleep(_RETRY_DELAY)
            if time.monotonic() >= next_scan:
                next_scan = time.monotonic() + _ORPHAN_SCAN_EVERY
                try:
                    await asyncio.to_thread(self.replay_orphans)
                except Exception:
                    log.exception("replaying orphaned journal segments failed")

    def replay_orphans(self) -> int:
        """Store the records of segments whose process died; returns how many were read."""
        if self._journal is None:
            return 0
        count = 0
        for path, records in self._journal.orphans():
            for start in range(0, len(records), self._batch_size):
                batch = records[start : start + self._batch_size]
                self._insert(batch, True)
                if self.on_replay is not None:
                    # Only the gateway's records settle leases: an agent's span may carry
                    # any attributes, an ``admission.lease`` of someone else's too.
                    self.on_replay([row for row in batch if metered(row)])
            count += len(records)
            log.info("replayed %d spans from %s", len(records), path.name)
        self.replayed += count
        return count

    def _insert(self, rows: list[dict[str, Any]], check_existing: bool = False) -> None:
        if not rows:
            return
        started = time.perf_counter()
        self.writer.write(rows, check_existing=check_existing)
        took = time.perf_counter() - started
        self.stored += len(rows)
        current = len(rows) / took if took > 0 else 0.0
        self.rate = current if not self.rate else 0.8 * self.rate + 0.2 * current
