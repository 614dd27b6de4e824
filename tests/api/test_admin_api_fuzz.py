"""Schema-driven fuzzing of the whole admin API: no input, valid or not, produces a 5xx.

Schemathesis reads the live server's OpenAPI document and generates requests
for every operation, valid ones and ones that break the schema; each is sent
with the org admin key so the handlers run past authentication.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

if TYPE_CHECKING:
    from conftest import Corral


def _seed(corral: Corral) -> None:
    """Something for lookups to find: a team, a user, a key."""
    with corral.client() as c:
        c.post("/api/v1/teams", json={"name": "payments"}).raise_for_status()
        c.post("/api/v1/users", json={"name": "alice", "team": "payments"}).raise_for_status()
        c.post("/api/v1/keys", json={"team": "payments", "user": "alice"}).raise_for_status()


def test_no_request_makes_the_admin_api_fail(corral: Corral) -> None:
    _seed(corral)
    schema = schemathesis.openapi.from_url(f"{corral.url}/api/v1/openapi.json")
    headers = {"authorization": f"Bearer {corral.admin_key}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12

    for operation in operations:
        cases = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        )

        @given(case=cases)
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=[not_a_server_error], timeout=30)

        no_server_error()
