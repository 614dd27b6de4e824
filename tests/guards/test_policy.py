"""Which detectors watch a team, with which thresholds and ladder: the defaults, the
``[guards]`` settings for everyone, a team's overrides; typos refused at start-up."""

from __future__ import annotations

from typing import Any

import pytest

from corral.errors import ConfigError
from corral.guards.detectors import builtin_detectors
from corral.guards.policy import Policy
from corral.settings import GuardsConfig


def _policy(**config: Any) -> Policy:
    return Policy(GuardsConfig.model_validate(config), builtin_detectors())


def _rule(policy: Policy, name: str, team_id: str | None = None, team: str | None = None) -> Any:
    return next((r for r in policy.rules(team_id, team) if r.detector.name == name), None)


def test_defaults_apply_to_every_team() -> None:
    policy = _policy()
    rule = _rule(policy, "repeated_request", "team_1", "payments")
    assert rule is not None
    assert rule.limits == {"repeats": 5, "window": 6}
    assert rule.actions == ("sequester",)
    assert rule.overridden == ()
    assert len(policy.rules(None)) == len(builtin_detectors())


def test_the_org_and_then_the_team_override_by_name_or_id() -> None:
    policy = _policy(
        detectors={"repeated_request": {"thresholds": {"repeats": 8}, "actions": ["warn"]}},
        teams=[
            {"team": "payments", "detectors": {"repeated_request": {"thresholds": {"window": 16}}}},
            {"team": "team_9", "detectors": {"error_storm": {"enabled": False}}},
        ],
    )
    org = _rule(policy, "repeated_request", "team_2", "search")
    assert org.limits == {"repeats": 8, "window": 6}
    assert org.actions == ("warn",)
    payments = _rule(policy, "repeated_request", "team_1", "payments")
    assert payments.limits == {"repeats": 8, "window": 16}
    assert payments.overridden == ("repeats", "window")
    assert _rule(policy, "error_storm", "team_9", "research") is None  # by id
    assert _rule(policy, "error_storm", "team_2", "search") is not None


def test_the_ladder_repeats_its_last_action() -> None:
    rule = _rule(_policy(detectors={"velocity": {"actions": ["warn", "kill"]}}), "velocity")
    assert [rule.action_for(n) for n in (1, 2, 3, 9)] == ["warn", "kill", "kill", "kill"]


def test_guards_off_for_everyone_or_one_team_keeps_the_views() -> None:
    assert _policy(enabled=False).rules("team_1", "payments") == ()
    policy = _policy(teams=[{"team": "payments", "enabled": False}])
    assert policy.rules("team_1", "payments") == ()
    assert policy.rules("team_2", "search")
    views = policy.views("team_1", "payments")
    assert len(views) == len(builtin_detectors())
    assert not any(v.enabled for v in views)


def test_a_view_marks_what_the_settings_changed() -> None:
    policy = _policy(
        detectors={"ceiling": {"thresholds": {"usd_per_minute": 50}, "enabled": False}}
    )
    ceiling = next(v for v in policy.views(None, None) if v.name == "ceiling")
    assert not ceiling.enabled
    assert ceiling.thresholds["usd_per_minute"] == 50
    assert ceiling.overridden == ("usd_per_minute",)


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"detectors": {"repeated_requests": {}}}, "no detector is named 'repeated_requests'"),
        (
            {"detectors": {"ceiling": {"thresholds": {"tokens_per_hour": 1}}}},
            "tokens_per_hour is not a threshold of ceiling",
        ),
        (
            {"teams": [{"team": "x", "detectors": {"nope": {}}}]},
            "[[guards.teams]] team 'x': no detector is named 'nope'",
        ),
        ({"detectors": {"ceiling": {"actions": []}}}, "actions must name at least one"),
    ],
)
def test_a_typo_stops_the_server_naming_what_exists(config: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _policy(**config)
    assert named in caught.value.message


def test_an_unknown_action_is_refused_by_the_settings() -> None:
    with pytest.raises(ValueError, match="sequestre"):
        GuardsConfig.model_validate({"detectors": {"ceiling": {"actions": ["sequestre"]}}})
