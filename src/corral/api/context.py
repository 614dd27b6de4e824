"""Who is calling and what they may touch: the per-request context of the admin API.

Every route takes a ``Context``: the application (``Host``), the identity
service and the caller's ``KeyInfo``, resolved from ``Authorization: Bearer``
or ``x-api-key`` through the app's key cache. Roles:

* ``admin`` (the organisation admin key) manages everything;
* ``team_admin`` manages its own team: its users, keys and usage, and reads its
  budgets;
* ``virtual`` may read only itself (``/api/v1/me``), its own usage and the
  budgets of its own chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from corral.clock import Clock
from corral.errors import NotFound, PermissionDenied
from corral.identity.keys import KeyCache, KeyInfo
from corral.identity.service import IdentityService
from corral.quota.gate import QuotaGate
from corral.routing import Catalog
from corral.routing.breaker import Breakers
from corral.routing.policy import RoutePolicy
from corral.settings import Settings
from corral.store import Store
from corral.traces.query import BlobReader
from corral.traces.retention import Retention


class Host(Protocol):
    """What the admin API needs from the application object (``CorralApp`` provides it)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def store(self) -> Store: ...
    @property
    def keys(self) -> KeyCache: ...
    @property
    def catalog(self) -> Catalog: ...
    @property
    def breakers(self) -> Breakers: ...
    @property
    def route_policy(self) -> RoutePolicy | None: ...
    async def reload_routes(self) -> None: ...
    @property
    def quotas(self) -> QuotaGate: ...
    @property
    def blobs(self) -> BlobReader: ...
    @property
    def retention(self) -> Retention: ...


# Where ``ApiGuard`` leaves the caller it authenticated from the headers, in the ASGI scope.
CALLER = "corral.caller"


@dataclass(frozen=True, slots=True)
class ApiState:
    """Stored on the FastAPI app's ``state`` by ``create_api``."""

    host: Host
    service: IdentityService


_bearer = HTTPBearer(
    auto_error=False, description="A Corral key: the org admin key, a team admin key or a key."
)
_api_key = APIKeyHeader(
    name="x-api-key", auto_error=False, description="The same key, another way."
)


@dataclass(frozen=True, slots=True)
class Context:
    host: Host
    service: IdentityService
    caller: KeyInfo

    def require_org_admin(self) -> None:
        self.caller.require_admin(None)

    def require_team_admin(self, team_id: str | None) -> None:
        """Allow the org admin, or the admin of ``team_id``."""
        self.caller.require_admin(team_id)

    def require_manager(self) -> None:
        """Allow any admin key (org or team); refuse keys that only call models."""
        if self.caller.role not in ("admin", "team_admin"):
            raise PermissionDenied(
                "this key may only call models; an admin or team admin key is needed here"
            )

    @property
    def is_person(self) -> bool:
        """A key that only calls models (a person's, a service account's, a run's)."""
        return self.caller.role not in ("admin", "team_admin")

    def own_team(self, team: str | None) -> str | None:
        """For a person's key: its own team's id, and ``team`` (a name or id) must be it
        (another team is 404, as one that does not exist)."""
        own = self.caller.team_id
        if team is not None and team not in (own, self._team_name(own)):
            raise NotFound(f"team {team!r} not found")
        return own

    def _team_name(self, team_id: str | None) -> str | None:
        return self.service.get_team(team_id).name if team_id else None

    def team_scope(self, team: str | None) -> str | None:
        """The team id a listing is limited to: a team admin always sees only its own team."""
        self.require_manager()
        if team is None:
            return None if self.caller.role == "admin" else self.caller.team_id
        team_id = self.service.get_team(team).id
        self.require_team_admin(team_id)
        return team_id


async def get_context(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Context:
    """The caller ``ApiGuard`` authenticated, or (the API served without it) authenticate
    now (401 without a valid key); the request's context."""
    state: ApiState = request.app.state.corral
    caller: KeyInfo | None = request.scope.get(CALLER)
    if caller is None:
        raw = bearer.credentials if bearer is not None else api_key
        caller = await state.host.keys.authenticate(raw)
    return Context(state.host, state.service, caller)


Ctx = Annotated[Context, Depends(get_context)]
