"""Guards for one process, put together from its parts (``CorralApp`` calls ``build``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from corral.clock import Clock
from corral.errors import CorralError
from corral.guards.actions import Actions, Measure, RunControl
from corral.guards.engine import Guards, HeldRuns
from corral.guards.incidents import IncidentService
from corral.guards.model import Detector, Subject
from corral.guards.policy import Policy
from corral.guards.switches import Switches
from corral.guards.webhooks import Notifier
from corral.identity.keys import KeyCache
from corral.identity.service import IdentityService
from corral.runs.service import RunService
from corral.settings import Settings
from corral.store import Store

log = logging.getLogger(__name__)


class _Timeline:
    """Webhook attempts written to the incident's timeline, off the event loop."""

    def __init__(self, incidents: IncidentService) -> None:
        self.incidents = incidents
        self._writing: set[asyncio.Future[None]] = set()

    def attempt(
        self, incident_id: str, attempt: int, status: int | None, error: str | None
    ) -> None:
        ok = status is not None and 200 <= status < 300
        detail = f"webhook attempt {attempt}: " + (
            f"delivered ({status})" if ok else f"failed ({error or status})"
        )
        future = asyncio.get_running_loop().run_in_executor(None, self._write, incident_id, detail)
        self._writing.add(future)
        future.add_done_callback(self._writing.discard)

    def _write(self, incident_id: str, detail: str) -> None:
        try:
            self.incidents.add_event(incident_id, actor="corral", kind="webhook", detail=detail)
        except CorralError as exc:
            log.warning("guards: incident %s: %s not recorded: %s", incident_id, detail, exc)


def webhook_url(policy: Policy, identity: IdentityService) -> Callable[[str | None], str | None]:
    """A team's webhook URL: its own ``[[guards.teams]]`` one, else the organisation's."""
    names: dict[str, str | None] = {}

    def url_for(team_id: str | None) -> str | None:
        if team_id is not None and team_id not in names:
            names[team_id] = None
            with contextlib.suppress(CorralError):
                names[team_id] = identity.get_team(team_id).name
        team = policy.team(team_id, names.get(team_id) if team_id else None)
        if team is not None and team.webhook_url:
            return team.webhook_url
        return policy.config.webhook_url

    return url_for


def build(
    *,
    settings: Settings,
    store: Store,
    clock: Clock,
    identity: IdentityService,
    runs: RunService,
    keys: KeyCache,
    detectors: Sequence[Detector],
    control: RunControl | None = None,
    held: HeldRuns | None = None,
    metrics: Measure | None = None,
    notifier: Notifier | None = None,
) -> Guards:
    """The engine with its policy, incidents, actions, switches and notifier."""
    config = settings.guards
    policy = Policy(config, detectors)
    incidents = IncidentService(store, clock)
    if notifier is None:
        secret = config.webhook_secret
        notifier = Notifier(
            webhook_url(policy, identity),
            on_attempt=_Timeline(incidents).attempt,
            secret=secret.get_secret_value() if secret is not None else None,
        )
    engine: Guards | None = None

    def forget(subject: Subject) -> None:
        if engine is not None:
            engine.forget(subject)

    actions = Actions(
        incidents=incidents, identity=identity, runs=runs, keys=keys, clock=clock,
        throttle_rpm=config.throttle_rpm, control=control, notifier=notifier, metrics=metrics,
        forget=forget,
    )  # fmt: skip
    engine = Guards(
        policy=policy, actions=actions, switches=Switches(store, clock), clock=clock,
        queue_max=config.queue_max, refresh_interval=settings.key_refresh_interval,
        sample_interval=config.sample_interval, runs=held, notifier=notifier,
    )  # fmt: skip
    return engine
