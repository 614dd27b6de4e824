"""Incidents in the store (``corral.guards.incidents``), on SQLite and on PostgreSQL: a firing
opens or adds to its subject's incident, evidence is capped, the action only escalates, the
state machine refuses what it does not allow, listing pages by key, and firings racing on one
subject from several threads open one incident."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from corral.clock import ManualClock
from corral.errors import Conflict, InvalidRequest, NotFound
from corral.guards.incidents import EVIDENCE_CAP, Incident, IncidentService
from corral.guards.model import Action, Finding, Subject
from corral.identity.service import DEFAULT_ORG_ID, IdentityService
from corral.store import Store

RUN = Subject("run", "run_loop")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def service(store: Store, clock: ManualClock) -> IncidentService:
    IdentityService(store, clock).ensure_default_org()
    return IncidentService(store, clock)


def _finding(n: int = 8, detector: str = "repeated_request") -> Finding:
    return Finding(
        detector=detector,
        message=f"the same request was sent {n} times in a row",
        numbers={"repeats": n, "threshold": 8},
        span_ids=(f"span{n:04d}",),
    )


def _fire(
    service: IncidentService,
    subject: Subject = RUN,
    *,
    n: int = 8,
    action: Action = "sequester",
    team_id: str | None = "team_a",
    detector: str = "repeated_request",
) -> tuple[Incident, bool]:
    run_id = subject.id if subject.kind == "run" else None
    key_id = subject.id if subject.kind == "key" else "key_of_run"
    return service.record_finding(
        subject=subject, org_id=DEFAULT_ORG_ID, team_id=team_id, owner_id="usr_ada",
        run_id=run_id, key_id=key_id, finding=_finding(n, detector), action=action,
    )  # fmt: skip


def test_a_firing_opens_an_incident_and_the_next_adds_to_it(
    service: IncidentService, clock: ManualClock
) -> None:
    """The first firing opens an incident (its summary the finding's message, an ``opened``
    event by ``guard:<detector>`` with the finding as data); the next one on the same subject
    adds its evidence and a ``fired`` event to that incident."""
    first, opened = _fire(service, n=8)
    assert opened
    assert first.id.startswith("inc_")
    assert (first.state, first.action, first.subject) == ("open", "sequester", "run")
    assert (first.run_id, first.key_id, first.owner_id) == ("run_loop", "key_of_run", "usr_ada")
    assert first.summary == "the same request was sent 8 times in a row"
    assert first.detector == "repeated_request"
    assert first.opened_at == clock.now()
    assert first.closed_at is None
    [entry] = first.evidence
    assert entry["numbers"] == {"repeats": 8, "threshold": 8}
    assert entry["span_ids"] == ["span0008"]
    assert (entry["at"], entry["action"]) == (clock.now(), "sequester")

    clock.advance(5)
    second, opened = _fire(service, n=9, detector="tool_repeat")
    assert not opened
    assert second.id == first.id
    assert [e["numbers"]["repeats"] for e in second.evidence] == [8, 9]
    assert second.summary == first.summary  # the opening finding's
    assert second.detector == "repeated_request"
    assert second.updated_at == clock.now()

    shown = service.get(first.id)
    assert [(e.kind, e.actor) for e in shown.events] == [
        ("opened", "guard:repeated_request"),
        ("fired", "guard:tool_repeat"),
    ]
    assert shown.events[1].data["numbers"] == {"repeats": 9, "threshold": 8}
    assert shown.as_json()["events"][0]["kind"] == "opened"


def test_numbers_json_cannot_hold_are_kept_as_text(service: IncidentService) -> None:
    """A z-score over a flat baseline is infinite: it is kept as text, on either store."""
    finding = Finding("spend_velocity", "spend far above the baseline", {"z": math.inf, "n": 3})
    incident, _ = service.record_finding(
        subject=RUN, org_id=DEFAULT_ORG_ID, team_id=None, owner_id=None, run_id=RUN.id,
        key_id=None, finding=finding, action="warn",
    )  # fmt: skip
    assert service.get(incident.id).evidence[0]["numbers"] == {"z": "inf", "n": 3}


def test_subjects_have_incidents_of_their_own(service: IncidentService) -> None:
    """A run, another run and a key each get their own incident; ``open_for`` finds each."""
    run, _ = _fire(service, RUN)
    other, opened_other = _fire(service, Subject("run", "run_other"))
    key, opened_key = _fire(service, Subject("key", "key_laptop"))
    assert opened_other
    assert opened_key
    assert len({run.id, other.id, key.id}) == 3
    assert key.subject == "key"
    assert key.target == Subject("key", "key_laptop")
    found = service.open_for(RUN)
    assert found is not None
    assert found.id == run.id
    assert service.open_for(Subject("key", "run_loop")) is None  # a key is not a run
    assert service.open_for(Subject("run", "run_quiet")) is None


def test_evidence_keeps_the_newest_firings_and_counts_the_dropped(
    service: IncidentService,
) -> None:
    for n in range(1, EVIDENCE_CAP + 4):
        incident, _ = _fire(service, n=n)
    assert len(incident.evidence) == EVIDENCE_CAP
    assert incident.evidence_dropped == 3
    assert incident.evidence[0]["numbers"]["repeats"] == 4
    assert incident.evidence[-1]["numbers"]["repeats"] == EVIDENCE_CAP + 3
    assert len(service.get(incident.id).events) == EVIDENCE_CAP + 3  # the timeline keeps all


def test_the_action_only_escalates(service: IncidentService) -> None:
    actions: list[Action] = ["warn", "throttle", "warn", "sequester", "throttle"]
    fired = [_fire(service, action=a)[0] for a in actions]
    assert [inc.action for inc in fired] == ["warn", "throttle", "throttle", "sequester",
                                              "sequester"]  # fmt: skip
    assert [e["action"] for e in fired[-1].evidence] == actions  # each firing's own action


def test_the_state_machine(service: IncidentService, clock: ManualClock) -> None:
    """open → acknowledged → released; a closed incident moves no more (409 naming its
    state); released sets closed_at and writes the step with its comment; the subject's next
    firing opens a new incident."""
    incident, _ = _fire(service)
    clock.advance(10)
    acked = service.set_state(incident.id, "acknowledged", actor="user:usr_ada", comment="mine")
    assert (acked.state, acked.closed_at) == ("acknowledged", None)
    with pytest.raises(Conflict, match="is acknowledged"):
        service.set_state(incident.id, "acknowledged", actor="admin")
    with pytest.raises(Conflict, match="is acknowledged; it cannot become open"):
        service.set_state(incident.id, "open", actor="admin")
    again, opened = _fire(service)  # an acknowledged incident still collects firings
    assert (again.id, opened) == (incident.id, False)

    clock.advance(10)
    released = service.set_state(incident.id, "released", actor="admin", comment="false alarm")
    assert released.state == "released"
    assert released.closed_at == clock.now()
    assert [(e.kind, e.actor, e.detail) for e in released.events] == [
        ("opened", "guard:repeated_request", "the same request was sent 8 times in a row"),
        ("ack", "user:usr_ada", "mine"),
        ("fired", "guard:repeated_request", "the same request was sent 8 times in a row"),
        ("release", "admin", "false alarm"),
    ]
    for state in ("killed", "acknowledged", "released"):
        with pytest.raises(Conflict, match=f"incident {incident.id} is released"):
            service.set_state(incident.id, state, actor="admin")
    with pytest.raises(InvalidRequest, match="open, acknowledged, released, killed"):
        service.set_state(incident.id, "closed", actor="admin")

    fresh, opened = _fire(service)
    assert opened
    assert fresh.id != incident.id
    killed = service.set_state(fresh.id, "killed", actor="user:usr_ada")
    assert (killed.state, killed.events[-1].kind) == ("killed", "kill")
    assert killed.closed_at is not None


def test_missing_incidents_are_not_found(service: IncidentService) -> None:
    _fire(service)
    assert service.list(run_id="run_\x00") == []
    assert service.list(team_id="team_\ud800") == []
    for call in (
        lambda: service.get("inc_missing"),
        lambda: service.set_state("inc_missing", "released", actor="admin"),
        lambda: service.add_event("inc_missing", actor="admin", kind="comment"),
        lambda: service.get("inc_" + "x" * 100),
        lambda: service.get("inc_\x00"),  # PostgreSQL refuses NUL: not a 503 but not found
        lambda: service.get("inc_\ud800"),
        lambda: service.list(before="inc_\x00"),
    ):
        with pytest.raises(NotFound, match=r"^incident .*inc_.* not found"):
            call()


def test_events_are_added_to_the_timeline(service: IncidentService, clock: ManualClock) -> None:
    incident, _ = _fire(service)
    clock.advance(3)
    event = service.add_event(
        incident.id, actor="guards", kind="sequester", detail="frozen", data={"took_s": 0.2}
    )
    assert event.at == clock.now()
    shown = service.get(incident.id)
    assert shown.events[-1] == event
    assert shown.updated_at == clock.now()


def test_listing_is_newest_first_and_pages_by_key(
    service: IncidentService, clock: ManualClock
) -> None:
    """Pages ``before`` the last id of the previous one meet every incident once, in order,
    incidents opened at the same moment included; filters narrow the list."""
    made: list[Incident] = []
    for i in range(7):
        if i % 2 == 0:  # pairs opened at the same moment: the id breaks the tie
            clock.advance(1)
        team = "team_a" if i < 5 else "team_b"
        made.append(_fire(service, Subject("run", f"run_{i}"), team_id=team)[0])
    newest_first = sorted(made, key=lambda inc: (inc.opened_at, inc.id), reverse=True)
    assert [inc.id for inc in service.list()] == [inc.id for inc in newest_first]

    pages: list[list[str]] = []
    before = None
    while True:
        page = service.list(limit=3, before=before)
        if not page:
            break
        pages.append([inc.id for inc in page])
        before = page[-1].id
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for page in pages for i in page] == [inc.id for inc in newest_first]

    assert {inc.id for inc in service.list(team_id="team_b")} == {m.id for m in made[5:]}
    assert [inc.id for inc in service.list(run_id="run_3")] == [made[3].id]
    assert len(service.list(key_id="key_of_run")) == 7
    service.set_state(made[0].id, "released", actor="admin")
    assert [inc.id for inc in service.list(state="released")] == [made[0].id]
    assert len(service.list(state="open")) == 6
    with pytest.raises(InvalidRequest, match="use one of open, acknowledged, released, killed"):
        service.list(state="closed")
    with pytest.raises(NotFound, match="inc_gone"):
        service.list(before="inc_gone")
    with pytest.raises(InvalidRequest, match="limit"):
        service.list(limit=0)


def test_racing_firings_on_one_subject_open_one_incident(
    service: IncidentService, store: Store
) -> None:
    """Eight threads fire on one subject at the same moment (each with a connection of its
    own): one incident is opened, holding all eight firings."""
    threads = 8
    start = threading.Barrier(threads)

    def fire(n: int) -> tuple[Incident, bool]:
        start.wait()
        return _fire(service, n=n)

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(fire, range(threads)))
    assert len({inc.id for inc, _ in results}) == 1
    assert sum(opened for _, opened in results) == 1
    [incident] = service.list()
    assert sorted(e["numbers"]["repeats"] for e in incident.evidence) == list(range(threads))
    kinds = [e.kind for e in service.get(incident.id).events]
    assert kinds == ["opened"] + ["fired"] * (threads - 1)


def test_racing_admins_switch_one_kill_switch_on_and_off(store: Store, clock: ManualClock) -> None:
    """Eight admins switch the same team's kill switch on at the same moment (a connection
    each): none of them fails, one switch is on, the first one's stands; eight switching it
    off at once all succeed too."""
    from corral.guards.switches import Switches

    IdentityService(store, clock).ensure_default_org()
    threads = 8
    start = threading.Barrier(threads)

    def flip(n: int, on: bool) -> dict[str | None, object]:
        start.wait()
        switches = Switches(store, clock, DEFAULT_ORG_ID)
        return dict(switches.set(DEFAULT_ORG_ID, "team_x", on, actor=f"admin{n}", comment=None))

    with ThreadPoolExecutor(threads) as pool:
        seen = list(pool.map(flip, range(threads), [True] * threads))
    assert all(set(on) == {"team_x"} for on in seen)
    [switch] = Switches(store, clock).refresh().values()
    assert switch.team_id == "team_x"
    assert switch.actor.startswith("admin")
    with ThreadPoolExecutor(threads) as pool:
        seen = list(pool.map(flip, range(threads), [False] * threads))
    assert all(on == {} for on in seen)
