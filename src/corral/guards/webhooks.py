"""Incident webhooks: each team told of its incidents by an HTTP POST of JSON.

``Notifier.notify`` is what the guards engine calls when an incident opens or changes. It
never blocks and never raises: it resolves the team's URL (none configured: nothing to do),
builds the body once and puts the delivery on a bounded queue (past ``queue_max`` the oldest
waiting delivery is dropped, logged and counted), so a slow or dead receiver can never slow
the gateway or the engine. A pool of ``concurrency`` tasks (``start``/``stop``) POSTs them.

A 2xx answer is delivered. Any other status (a 3xx included: redirects are not followed, so
a receiver cannot bounce the incident to a host nobody configured), a timeout or a
connection error is retried with exponential backoff and jitter until ``retries`` attempts
are spent; then it is given up, logged and counted. Every attempt is reported to
``on_attempt`` (the engine writes it to the incident's timeline).

The request, as GitHub's webhooks do it::

    POST <url>
    content-type: application/json
    user-agent: corral/<version>
    x-corral-event: <event>              e.g. incident.opened
    x-corral-delivery: <id>              unique per delivery, the same on its retries
    x-corral-signature: sha256=<hex>     HMAC-SHA256 of the body with the secret, when set

    {"event": <event>, "incident": <the incident as JSON>, "sent_at": <ISO-8601, UTC>}

The body (and so ``sent_at``) is made once, when the incident is notified: a retry sends the
same bytes, so a receiver may deduplicate on the delivery id and verify every attempt alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from corral import __version__
from corral.errors import ConfigError

log = logging.getLogger(__name__)

BACKOFF_MAX_S = 60.0

UrlFor = Callable[[str | None], str | None]
"""A team's webhook URL (its own, else the organisation's), or None: no webhook."""
OnAttempt = Callable[[str, int, int | None, str | None], None]
"""Called after each attempt: incident id, attempt number (from 1), the HTTP status (None
when no answer came) and what went wrong (None when delivered)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One incident notification to one URL, with the body and headers every attempt sends."""

    id: str
    incident_id: str
    url: str
    body: bytes
    headers: Mapping[str, str]


class Notifier:
    """Posts incidents to their team's webhook from a bounded queue, with retries.

    Counters: ``delivered`` (a 2xx came back), ``failed`` (every attempt failed, or the
    incident could not be made JSON), ``dropped`` (never sent: the queue overflowed, or
    ``stop`` found it unsent) and ``queued`` (waiting now). ``notify`` must be called on the
    event loop's thread (the engine's); ``start`` and ``stop`` on the loop.

    ``client`` is used as given and left open (its owner closes it); without one the
    notifier makes its own at ``start`` and closes it at ``stop``. ``sleep`` waits between
    attempts (tests pass one that records the delays).
    """

    def __init__(
        self,
        url_for: UrlFor,
        client: httpx.AsyncClient | None = None,
        on_attempt: OnAttempt | None = None,
        *,
        retries: int = 5,
        backoff: float = 1.0,
        timeout: float = 5.0,
        queue_max: int = 1000,
        concurrency: int = 4,
        secret: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        version: str = __version__,
    ) -> None:
        if retries < 1 or queue_max < 1 or concurrency < 1:
            raise ConfigError("webhook retries, queue_max and concurrency must be at least 1")
        self._url_for = url_for
        self._given_client = client
        self._client: httpx.AsyncClient | None = client
        self._on_attempt = on_attempt
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.queue_max = queue_max
        self.concurrency = concurrency
        self._secret = secret.encode() if secret is not None else None
        self._sleep = sleep
        self._user_agent = f"corral/{version}"
        self._queue: deque[Delivery] = deque()
        self._wake = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._stopping = False
        self._in_flight: set[str] = set()
        self._random = random.Random()  # jitter only
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Deliveries a worker holds now (posting, or waiting to retry)."""
        return len(self._in_flight)

    # -- the engine's side -------------------------------------------------------------

    def notify(self, team_id: str | None, payload: Mapping[str, Any], event: str) -> None:
        """Queue ``payload`` (the incident as JSON, with its ``id``) for ``team_id``'s webhook.

        Returns at once; never raises. No URL for the team: nothing is sent.
        """
        try:
            url = self._url_for(team_id)
        except Exception:
            # The engine must not fail because a settings lookup did.
            log.exception("could not find the webhook URL of team %s", team_id)
            return
        if not url:
            return
        incident_id = str(payload.get("id") or "")
        try:
            delivery = self._delivery(url, incident_id, payload, event)
        except (TypeError, ValueError):
            self.failed += 1
            log.exception("incident %s could not be made JSON; not sent", incident_id)
            return
        if len(self._queue) >= self.queue_max:
            oldest = self._queue.popleft()
            self.dropped += 1
            log.warning(
                "webhook queue full (%d): dropped delivery %s of incident %s",
                self.queue_max,
                oldest.id,
                oldest.incident_id,
            )
        self._queue.append(delivery)
        self._wake.set()

    def _delivery(
        self, url: str, incident_id: str, payload: Mapping[str, Any], event: str
    ) -> Delivery:
        sent_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        document = {"event": event, "incident": payload, "sent_at": sent_at}
        body = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
        delivery_id = uuid.uuid4().hex
        headers = {
            "content-type": "application/json",
            "user-agent": self._user_agent,
            "x-corral-event": event,
            "x-corral-delivery": delivery_id,
        }
        if self._secret is not None:
            headers["x-corral-signature"] = "sha256=" + sign(self._secret, body)
        return Delivery(delivery_id, incident_id, url, body, headers)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the delivery pool (deliveries queued before are sent too)."""
        if self._workers:
            return
        if self._client is None:
            self._client = httpx.AsyncClient()
        self._wake = asyncio.Event()  # bound to this loop
        if self._queue:
            self._wake.set()
        self._workers = [
            asyncio.create_task(self._work(), name=f"corral-webhooks-{n}")
            for n in range(self.concurrency)
        ]

    async def stop(self, grace: float = 2.0) -> None:
        """Let the pool drain the queue for up to ``grace`` seconds, then cancel what is left
        of it and wait for every task to end. What is still unsent counts as dropped."""
        workers, self._workers = self._workers, []
        if workers:
            self._stopping = True
            self._wake.set()
            _, pending = await asyncio.wait(workers, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self._stopping = False
        if self._queue:
            self.dropped += len(self._queue)
            log.warning("incident webhooks stopped with %d deliveries unsent", len(self._queue))
            self._queue.clear()
        if self._client is not None and self._given_client is None:
            await self._client.aclose()
            self._client = None

    # -- the pool ------------------------------------------------------------------------

    async def _work(self) -> None:
        """Take deliveries until stopped: at ``stop``, once the queue is empty."""
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            delivery = self._queue.popleft()
            self._in_flight.add(delivery.id)
            try:
                await self._deliver(delivery)
            except asyncio.CancelledError:
                self.dropped += 1  # stopped mid-delivery (or while waiting to retry)
                raise
            except Exception:
                # A worker must outlive any surprise, or the queue would fill unseen.
                self.failed += 1
                log.exception("delivering incident %s failed", delivery.incident_id)
            finally:
                self._in_flight.discard(delivery.id)

    async def _deliver(self, delivery: Delivery) -> None:
        """Attempt ``delivery`` until a 2xx comes back or the attempts are spent."""
        for attempt in range(1, self.retries + 1):
            status, error = await self._post(delivery)
            self._report(delivery.incident_id, attempt, status, error)
            if error is None:
                self.delivered += 1
                return
            if attempt < self.retries:
                await self._sleep(self._delay(attempt))
        self.failed += 1
        log.warning(
            "gave up on the webhook of incident %s at %s after %d attempts (%s)",
            delivery.incident_id,
            safe_url(delivery.url),
            self.retries,
            error,
        )

    async def _post(self, delivery: Delivery) -> tuple[int | None, str | None]:
        """One attempt: the HTTP status (None without an answer) and the failure, if any."""
        assert self._client is not None, "start() the notifier first"
        try:
            response = await self._client.post(
                delivery.url,
                content=delivery.body,
                headers=delivery.headers,
                timeout=self.timeout,
                follow_redirects=False,
            )
        except httpx.TimeoutException:
            return None, f"no answer within {self.timeout:g}s"
        except httpx.InvalidURL:  # its message quotes the URL, secrets and all
            return None, "the webhook URL is not a valid URL"
        except httpx.HTTPError as exc:
            detail = str(exc)
            return None, f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        status = response.status_code
        if response.is_success:
            return status, None
        if response.is_redirect:
            return status, f"HTTP {status}: redirects are not followed"
        return status, f"HTTP {status} {response.reason_phrase}".rstrip()

    def _report(
        self, incident_id: str, attempt: int, status: int | None, error: str | None
    ) -> None:
        if self._on_attempt is None:
            return
        try:
            self._on_attempt(incident_id, attempt, status, error)
        except Exception:
            # Recording the attempt is the engine's business; the delivery goes on.
            log.exception(
                "recording webhook attempt %d of incident %s failed", attempt, incident_id
            )

    def _delay(self, attempt: int) -> float:
        """Doubling from ``backoff``, capped, with half of it random so that receivers coming
        back are not hit by every retry at once."""
        ceiling = min(BACKOFF_MAX_S, self.backoff * 2.0 ** (attempt - 1))
        return ceiling / 2 + self._random.uniform(0, ceiling / 2)


def sign(secret: bytes, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``body``: what ``x-corral-signature`` carries after ``sha256=``."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, signature: str | None) -> bool:
    """Whether ``signature`` (the header's value) signs ``body``: what a receiver checks."""
    if not signature or not signature.startswith("sha256="):
        return False
    return hmac.compare_digest(signature.removeprefix("sha256="), sign(secret, body))


def safe_url(url: str) -> str:
    """``url`` fit for a log line: scheme, host and port only (webhook URLs, Slack's among
    them, often carry their secret in the path or query)."""
    with contextlib.suppress(httpx.InvalidURL):
        parsed = httpx.URL(url)
        port = f":{parsed.port}" if parsed.port else ""
        return f"{parsed.scheme}://{parsed.host}{port}/…"
    return "<an invalid URL>"


__all__ = ["Delivery", "Notifier", "OnAttempt", "UrlFor", "sign", "verify"]
