"""The gateway's three stages a component can register on.

* A **request guard** sees the identity, the parsed request and its route before
  admission; it refuses by raising a ``CorralError`` (the caller gets it in its protocol's
  shape and the refusal is recorded) or returns attributes to annotate the call's record
  (a ``warning`` attribute is also sent to the caller, as ``x-corral-guard-warning``).
  A guard that raises anything else refuses the call too (500 ``guard_failed``): a
  broken guard fails closed.
* A **response observer** is fed by the stream meter, chunk by chunk as the response is
  relayed (a whole response is one chunk): it sees usage and timing as they arrive, runs
  on the request path and must be cheap; what it raises is logged and ignored.
* A **call listener** is told of each finished call after its record is written: the
  span rows (the call and its attempts) with identity, tokens and cost; what it raises is
  logged and ignored.

With nothing registered a stage costs one truth test per call (per chunk for
observers). Guards (issue 14) and metrics plug in here; extensions register through
the ``corral`` entry points (``corral.plugins``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from corral.errors import CorralError
from corral.identity import KeyInfo
from corral.protocols import Outcome

log = logging.getLogger(__name__)


class GuardFailed(CorralError):
    """A request guard raised something other than a ``CorralError``: refused, fail closed."""

    code = "guard_failed"


def _name(hook: object) -> str:
    return getattr(hook, "__qualname__", None) or type(hook).__qualname__


class HeaderView(Mapping[str, str]):
    """A request's headers by name (lower-case, as ASGI gives them), decoded on first read:
    most calls reach no guard that reads them, and every call has a ``Request``."""

    __slots__ = ("_decoded", "_raw")

    def __init__(self, raw: Sequence[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._decoded: dict[str, str] | None = None

    def _all(self) -> dict[str, str]:
        if self._decoded is None:
            self._decoded = {k.decode("latin-1"): v.decode("latin-1") for k, v in self._raw}
        return self._decoded

    def __getitem__(self, name: str) -> str:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


@dataclass(frozen=True, slots=True)
class Request:
    """A model call as a guard and an observer see it (read it; do not change ``body``)."""

    request_id: str
    key: KeyInfo
    protocol: str
    model: str
    stream: bool
    body: Mapping[str, Any]
    headers: Mapping[str, str]
    path: str


@dataclass(frozen=True, slots=True)
class FinishedCall:
    """A call whose record is written: ``rows[0]`` is its ``llm_request`` span, the rest its
    attempts (span rows as the ``spans`` table holds them); ``request`` the call as the
    guards saw it (None when no guard or observer is registered)."""

    key: KeyInfo
    rows: tuple[Mapping[str, Any], ...]
    request: Request | None = None

    @property
    def span(self) -> Mapping[str, Any]:
        return self.rows[0]


class RequestGuard(Protocol):
    def __call__(self, request: Request) -> Mapping[str, Any] | None:
        """Refuse by raising a ``CorralError``; or return attributes for the record."""


class ResponseObserver(Protocol):
    def __call__(self, request: Request, chunk: bytes, outcome: Outcome, elapsed: float) -> None:
        """One relayed chunk; ``outcome`` holds the usage known so far; ``elapsed`` is the
        seconds since the call arrived. Cheap: it runs between the upstream and the
        client."""


class CallListener(Protocol):
    def __call__(self, call: FinishedCall) -> None:
        """A finished call, after its record is written."""


@dataclass(slots=True)
class GatewayHooks:
    """The registered guards, observers and listeners, called in registration order."""

    guards: list[RequestGuard] = field(default_factory=list)
    observers: list[ResponseObserver] = field(default_factory=list)
    listeners: list[CallListener] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        guards: Iterable[RequestGuard] = (),
        observers: Iterable[ResponseObserver] = (),
        listeners: Iterable[CallListener] = (),
    ) -> GatewayHooks:
        return cls(list(guards), list(observers), list(listeners))

    @property
    def watching(self) -> bool:
        """Whether a guard or an observer needs the call's ``Request``."""
        return bool(self.guards or self.observers)

    def guard(self, request: Request) -> dict[str, Any]:
        """Run every guard; the first refusal propagates. Returns the merged annotations."""
        notes: dict[str, Any] = {}
        for guard in self.guards:
            try:
                extra = guard(request)
            except CorralError:
                raise
            except Exception as exc:
                # Fail closed: a guard that breaks must not wave calls through.
                log.exception("request guard %r failed; the call is refused", guard)
                raise GuardFailed(
                    f"a request guard ({_name(guard)}) failed, so the call was refused: "
                    f"{type(exc).__name__}; the operator can see why in the server's log"
                ) from exc
            if extra:
                notes.update(extra)
        return notes

    def observe(self, request: Request, chunk: bytes, outcome: Outcome, elapsed: float) -> None:
        for observer in self.observers:
            try:
                observer(request, chunk, outcome, elapsed)
            except Exception:
                log.exception("response observer %r failed (ignored)", observer)

    def finished(self, call: FinishedCall) -> None:
        for listener in self.listeners:
            try:
                listener(call)
            except Exception:
                log.exception("call listener %r failed (ignored)", listener)
