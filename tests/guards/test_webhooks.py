"""Incident webhooks: deliveries to a real receiver on loopback (uvicorn in a thread).

The receiver answers each POST with the next status of its script (200 once it is spent);
``HANG`` holds the request until the test releases it. Backoff waits go through an injected
``sleep`` that records them, so retries take no wall time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral import __version__
from corral.errors import ConfigError
from corral.guards.webhooks import Notifier, verify
from corral.testing import ServerThread

pytestmark = pytest.mark.timeout(30)

HANG = "hang"
INCIDENT = {"id": "inc_1", "detector": "repeated_request", "state": "open", "team_id": "team_1"}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A webhook endpoint at ``/hook`` answering from a script; ``/elsewhere`` is where its
    redirects point (a notifier that followed one would show up there)."""

    def __init__(self, *script: int | str) -> None:
        self.script = deque(script)
        self.received: list[Received] = []
        self.release = threading.Event()
        self.app = Starlette(
            routes=[
                Route("/hook", self.hook, methods=["POST"]),
                Route("/elsewhere", self.hook, methods=["GET", "POST"]),
            ]
        )

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        self.received.append(Received(request.url.path, dict(request.headers), body))
        step = self.script.popleft() if self.script else 200
        if step == HANG:
            await asyncio.to_thread(self.release.wait, 20)
            step = 200
        assert isinstance(step, int)
        if 300 <= step < 400:
            return Response(status_code=step, headers={"location": "/elsewhere"})
        return Response(b"", status_code=step)


@dataclass
class Hook:
    receiver: Receiver
    url: str
    attempts: list[tuple[str, int, int | None, str | None]] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)

    def on_attempt(
        self, incident: str, attempt: int, status: int | None, error: str | None
    ) -> None:
        self.attempts.append((incident, attempt, status, error))

    async def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)

    def notifier(self, client: httpx.AsyncClient, **options: Any) -> Notifier:
        """A notifier posting team_1's incidents (and no other team's) to this hook."""

        def url_for(team_id: str | None) -> str | None:
            return self.url if team_id == "team_1" else None

        return Notifier(url_for, client, self.on_attempt, sleep=self.sleep, **options)


@pytest.fixture
def serve() -> Iterator[Callable[..., Hook]]:
    """Start a receiver with the given script; each is released and stopped at teardown."""
    started: list[tuple[Receiver, ServerThread]] = []

    def start(*script: int | str) -> Hook:
        receiver = Receiver(*script)
        server = ServerThread(receiver.app, lifespan="off").start()
        started.append((receiver, server))
        return Hook(receiver, f"{server.url}/hook")

    yield start
    for receiver, server in started:
        receiver.release.set()
        server.stop()


def run(coro: Any, timeout: float = 20.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def until(condition: Callable[[], bool]) -> None:
    """Wait (at most 10 s) for ``condition``: the counters it reads have no event to await."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - plain counters, nothing to wait on
            await asyncio.sleep(0.01)


def test_a_failing_receiver_gets_the_incident_on_the_third_attempt(
    serve: Callable[..., Hook],
) -> None:
    """Two 500s, then 200: delivered on attempt 3, every attempt reported, the same body and
    delivery id each time, backoff doubling from ``backoff`` with jitter."""
    hook = serve(500, 500)

    async def scenario() -> Notifier:
        async with httpx.AsyncClient() as client:
            notifier = hook.notifier(client, backoff=1.0)
            await notifier.start()
            notifier.notify("team_1", INCIDENT, "incident.opened")
            notifier.notify("team_2", {**INCIDENT, "id": "inc_2"}, "incident.opened")
            assert notifier.queued == 1, "team_2 has no webhook: nothing queued for it"
            await until(lambda: notifier.delivered + notifier.failed >= 1)
            await notifier.stop()
            return notifier

    notifier = run(scenario())
    assert (notifier.delivered, notifier.failed, notifier.dropped) == (1, 0, 0)
    assert hook.attempts == [
        ("inc_1", 1, 500, "HTTP 500 Internal Server Error"),
        ("inc_1", 2, 500, "HTTP 500 Internal Server Error"),
        ("inc_1", 3, 200, None),
    ]
    first, *retries = hook.receiver.received
    assert len(retries) == 2
    assert all(r.body == first.body for r in retries)
    assert {r.headers["x-corral-delivery"] for r in retries} == {first.headers["x-corral-delivery"]}
    assert first.headers["content-type"] == "application/json"
    assert first.headers["user-agent"] == f"corral/{__version__}"
    assert first.headers["x-corral-event"] == "incident.opened"
    assert "x-corral-signature" not in first.headers
    document = first.json()
    assert document["event"] == "incident.opened"
    assert document["incident"] == INCIDENT
    assert datetime.fromisoformat(document["sent_at"]).tzinfo is not None
    assert len(hook.delays) == 2
    assert 0.5 <= hook.delays[0] <= 1.0
    assert 1.0 <= hook.delays[1] <= 2.0


def test_each_delivery_has_its_own_id(serve: Callable[..., Hook]) -> None:
    """Two notifications of one incident are two deliveries with distinct ids and events."""
    hook = serve()

    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            notifier = hook.notifier(client)
            await notifier.start()
            notifier.notify("team_1", INCIDENT, "incident.opened")
            notifier.notify("team_1", {**INCIDENT, "state": "sequestered"}, "incident.updated")
            await until(lambda: notifier.delivered == 2)
            await notifier.stop()

    run(scenario())
    ids = {r.headers["x-corral-delivery"] for r in hook.receiver.received}
    assert len(ids) == 2
    events = sorted(r.headers["x-corral-event"] for r in hook.receiver.received)
    assert events == ["incident.opened", "incident.updated"]


def test_a_receiver_that_never_answers_is_retried_then_given_up(
    serve: Callable[..., Hook],
) -> None:
    """Each attempt times out after ``timeout``; once ``retries`` attempts are spent the
    delivery is given up and counted failed."""
    hook = serve(HANG, HANG, HANG)

    async def scenario() -> Notifier:
        async with httpx.AsyncClient() as client:
            notifier = hook.notifier(client, retries=3, timeout=0.2)
            await notifier.start()
            notifier.notify("team_1", INCIDENT, "incident.opened")
            await until(lambda: notifier.failed == 1)
            await notifier.stop()
            return notifier

    notifier = run(scenario())
    assert (notifier.delivered, notifier.failed) == (0, 1)
    assert hook.attempts == [("inc_1", n, None, "no answer within 0.2s") for n in (1, 2, 3)]
    assert len(hook.receiver.received) == 3
    assert len(hook.delays) == 2


def test_a_dead_port_is_retried(serve: Callable[..., Hook]) -> None:
    """Nothing listens: each attempt is a connection error, retried, then given up."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hook = Hook(Receiver(), f"http://127.0.0.1:{port}/hook")

    async def scenario() -> Notifier:
        async with httpx.AsyncClient() as client:
            notifier = hook.notifier(client, retries=4)
            await notifier.start()
            notifier.notify("team_1", INCIDENT, "incident.opened")
            await until(lambda: notifier.failed == 1)
            await notifier.stop()
            return notifier

    notifier = run(scenario())
    assert [(a[1], a[2]) for a in hook.attempts] == [(n, None) for n in (1, 2, 3, 4)]
    assert all(str(a[3]).startswith("ConnectError") for a in hook.attempts)
    assert len(hook.delays) == 3
    assert (notifier.delivered, notifier.failed) == (0, 1)


def test_notify_returns_while_the_receiver_hangs(serve: Callable[..., Hook]) -> None:
    """``notify`` only queues: it returns before any attempt is made, and again while a
    delivery hangs at the receiver; the hung delivery completes once the receiver answers."""
    hook = serve(HANG)

    async def scenario() -> Notifier:
        async with httpx.AsyncClient() as client:
            notifier = hook.notifier(client, concurrency=1)
            await notifier.start()
            notifier.notify("team_1", INCIDENT, "incident.opened")
            assert (notifier.queued, notifier.in_flight, hook.attempts) == (1, 0, [])
            await until(lambda: len(hook.receiver.received) == 1)
            assert (notifier.queued, notifier.in_flight) == (0, 1)
            notifier.notify("team_1", {**INCIDENT, "id": "inc_2"}, "incident.opened")
            assert (notifier.queued, notifier.in_flight, hook.attempts) == (1, 1, [])
            hook.receiver.release.set()
            await until(lambda: notifier.delivered == 2)
            await notifier.stop()
            return notifier

    run(scenario())
    assert hook.attempts == [("inc_1", 1, 200, None), ("inc_2", 1, 200, None)]


def test_a_full_queue_drops_the_oldest_delivery(serve: Callable[..., Hook]) -> None:
    """Past ``queue_max`` waiting deliveries the oldest is dropped and counted; the newest
    are sent."""
    hook = serve()

    async def scenario() -> Notifier:
        async with httpx.AsyncClient() as client:
            notifier = hook.notifier(client, queue_max=2, concurrency=1)
            for n in (1, 2, 3):
                notifier.notify("team_1", {**INCIDENT, "id": f"inc_{n}"}, "incident.opened")
            assert (notifier.queued, notifier.dropped) == (2, 1)
            await notifier.start()
            await until(lambda: notifier.delivered == 2)
            await notifier.stop()
            return notifier

    notifier = run(scenario())
    assert [r.json()["incident"]["id"] for r in hook.receiver.received] == ["inc_2", "inc_3"]
    assert (notifier.delivered, notifier.dropped, notifier.failed) == (2, 1, 0)


def test_the_signature_is_an_hmac_of_the_body(serve: Callable[..., Hook]) -> None:
    """With a secret, ``x-corral-signature`` is ``sha256=`` and the HMAC-SHA256 of the exact
    bytes received; ``verify`` accepts it and refuses a changed body or another secret."""
    hook = serve()

    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            notifier = hook.notifier(client, secret="s3cret")
            await notifier.start()
            notifier.notify("team_1", INCIDENT, "incident.opened")
            await until(lambda: notifier.delivered == 1)
            await notifier.stop()

    run(scenario())
    (received,) = hook.receiver.received
    signature = received.headers["x-corral-signature"]
    expected = hmac.new(b"s3cret", received.body, hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"
    assert verify(b"s3cret", received.body, signature)
    assert not verify(b"s3cret", received.body + b" ", signature)
    assert not verify(b"other", received.body, signature)
    assert not verify(b"s3cret", received.body, None)


def test_a_redirect_is_not_followed(serve: Callable[..., Hook]) -> None:
    """A 302 is a failed attempt: retried at the same URL, never followed to its Location."""
    hook = serve(302, 302)

    async def scenario() -> Notifier:
        async with httpx.AsyncClient(follow_redirects=True) as client:
            notifier = hook.notifier(client, retries=2)
            await notifier.start()
            notifier.notify("team_1", INCIDENT, "incident.opened")
            await until(lambda: notifier.failed == 1)
            await notifier.stop()
            return notifier

    run(scenario())
    assert [r.path for r in hook.receiver.received] == ["/hook", "/hook"]
    assert hook.attempts == [
        ("inc_1", n, 302, "HTTP 302: redirects are not followed") for n in (1, 2)
    ]


def test_stop_cancels_what_it_cannot_finish_and_leaves_no_task(
    serve: Callable[..., Hook],
) -> None:
    """A delivery hung at the receiver and one waiting behind it: ``stop`` waits its grace,
    cancels, counts both dropped, and no delivery task outlives it."""
    hook = serve(HANG)

    async def scenario() -> Notifier:
        async with httpx.AsyncClient() as client:
            notifier = hook.notifier(client, concurrency=1)
            await notifier.start()
            notifier.notify("team_1", INCIDENT, "incident.opened")
            notifier.notify("team_1", {**INCIDENT, "id": "inc_2"}, "incident.opened")
            await until(lambda: len(hook.receiver.received) == 1)
            await notifier.stop(grace=0.1)
            others = asyncio.all_tasks() - {asyncio.current_task()}
            assert not [t for t in others if t.get_name().startswith("corral-webhooks")]
            return notifier

    notifier = run(scenario())
    assert (notifier.delivered, notifier.failed, notifier.dropped, notifier.queued) == (0, 0, 2, 0)
    assert hook.attempts == []


def test_notify_never_raises() -> None:
    """A URL lookup that fails or an incident that is not JSON is logged and skipped."""

    def broken(team_id: str | None) -> str | None:
        raise LookupError(team_id)

    Notifier(broken).notify("team_1", INCIDENT, "incident.opened")
    notifier = Notifier(lambda team: "http://127.0.0.1:9/hook")
    notifier.notify("team_1", {"id": "inc_1", "when": object()}, "incident.opened")
    assert (notifier.queued, notifier.failed) == (0, 1)


def test_a_notifier_needs_at_least_one_attempt_and_worker() -> None:
    """Zero retries, queue or workers is a configuration error, named as such."""
    with pytest.raises(ConfigError, match="at least 1"):
        Notifier(lambda team: None, retries=0)
    with pytest.raises(ConfigError, match="at least 1"):
        Notifier(lambda team: None, queue_max=0)
    with pytest.raises(ConfigError, match="at least 1"):
        Notifier(lambda team: None, concurrency=0)
