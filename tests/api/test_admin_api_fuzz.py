"""Fuzzing the whole admin API: no input, valid or not, produces a 5xx or an error quoting SQL.

Schemathesis reads the live server's OpenAPI document and generates requests
for every operation, valid ones and ones that break the schema; each is sent
with the org admin key so the handlers run past authentication. Then the
values JSON and query strings allow but no handler should meet are tried on
every numeric field the document declares: NaN, the infinities, numbers past
a float or a 64-bit integer. Each must be a 4xx naming the field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from tests.sandboxing import make_repo

from corral.clock import SystemClock
from corral.errors import StoreError
from corral.identity.service import DEFAULT_ORG_ID, IdentityService
from corral.store import Store
from corral.store.schema import teams

if TYPE_CHECKING:
    from conftest import Corral

# What a database error message carries when it leaks: the statement, the driver, the table.
_SQL = re.compile(
    r"\[SQL:|\bSELECT\b.+\bFROM\b|\bINSERT INTO\b|\bUPDATE\b.+\bSET\b|sqlalchemy|psycopg|sqlite3|"
    r"\bparameters\b.*\(|Background on this error",
    re.IGNORECASE | re.DOTALL,
)


def no_sql_in_errors(ctx: Any, response: Any, case: Any) -> bool:
    """A schemathesis check: an error body never quotes SQL or names the database driver."""
    if response.status_code >= 400 and _SQL.search(response.text):
        raise AssertionError(f"the error quotes the database: {response.text[:500]}")
    return True


schemathesis.check(no_sql_in_errors)


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
            case.call_and_validate(
                headers=headers, checks=[not_a_server_error, no_sql_in_errors], timeout=30
            )

        no_server_error()


# Raw JSON: Python's json (which FastAPI parses with) reads NaN and Infinity literals, and
# 1e999 as infinity; 10**400 is an integer no float holds.
_BAD_FLOATS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", str(10**400)]
# Past what a 64-bit column holds (a float field may take them: 1.8e19 is a float).
_BAD_INTS = [str(2**63), str(2**64), str(10**40), str(-(2**64))]


def _bodies(repo: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """A valid body for each operation that takes numbers, so a bad number is what is judged."""
    team = {"kind": "team", "ref": "payments"}
    return {
        ("patch", "/api/v1/teams/{team}"): {"retention_days": 7},
        ("post", "/api/v1/route/policies"): {"team": "payments", "tier": "economy"},
        ("put", "/api/v1/budgets"): {"scope": team, "resource": "usd", "limit": 5},
        ("put", "/api/v1/limits"): {"scope": team, "rpm": 10},
        ("post", "/api/v1/reviews/{run_id}/comments"): {"text": "x", "path": "README.md"},
        ("post", "/api/v1/runs"): {
            "agent": "command",
            "repo": str(repo),
            "task": "t",
            "command": "true",
            "team": "payments",
            "owner": "alice",
        },
    }


def _numeric_fields(doc: dict[str, Any]) -> list[tuple[str, str, str, list[str]]]:
    """(method, path, field, bad values) for every number or integer a request body declares."""
    schemas = doc["components"]["schemas"]
    found = []
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            content = op.get("requestBody", {}).get("content", {}).get("application/json")
            if content is None:
                continue
            schema = schemas[content["schema"]["$ref"].rsplit("/", 1)[-1]]
            for name, prop in schema.get("properties", {}).items():
                kinds = {prop.get("type")} | {a.get("type") for a in prop.get("anyOf", ())}
                if "number" in kinds:
                    found.append((method, path, name, _BAD_FLOATS))
                elif "integer" in kinds:
                    found.append((method, path, name, _BAD_FLOATS + _BAD_INTS))
    return found


def _refused_naming(response: httpx.Response, field: str, bad: str) -> None:
    sent = (field, bad[:20], response.status_code, response.text)
    assert 400 <= response.status_code < 500, sent
    assert not _SQL.search(response.text), sent
    assert field in response.json()["error"]["message"], sent


def test_out_of_range_numbers_are_refused_naming_the_field(corral: Corral, tmp_path: Path) -> None:
    """NaN, infinities and huge numbers in any body field or integer query parameter: a 4xx
    that names the field, never a 500 (float overflow, a seek past 2**63) or a 503 quoting
    the SQL the database refused."""
    _seed(corral)
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    bodies = _bodies(repo)
    with corral.client() as c:
        doc = c.get("/api/v1/openapi.json").json()
        fields = _numeric_fields(doc)
        assert ("post", "/api/v1/runs", "timeout", _BAD_FLOATS) in fields
        for method, path, field, bad_values in fields:
            assert (method, path) in bodies, f"give a valid body for {method} {path} here"
            base = bodies[(method, path)]
            url = path.replace("{team}", "payments")
            for bad in bad_values:
                raw = json.dumps(base)[:-1] + f', "{field}": {bad}}}'
                sent = c.request(
                    method, url, content=raw, headers={"content-type": "application/json"}
                )
                _refused_naming(sent, field, bad)
        for path, operations in doc["paths"].items():
            for method, op in operations.items():
                for param in op.get("parameters", ()):
                    if param["in"] != "query" or param["schema"].get("type") != "integer":
                        continue
                    url = re.sub(r"\{[^}]+\}", "run_x", path)
                    for bad in _BAD_INTS:
                        sent = c.request(method, url, params={param["name"]: bad})
                        _refused_naming(sent, param["name"], bad)


def test_a_store_error_tells_the_caller_no_sql_and_no_values(store: Store) -> None:
    """The database refusing a write (here a duplicate team, as a race would make it): the
    message names no statement, no table and none of the row's values (before: the SQL and
    its parameters, another tenant's names among them)."""
    IdentityService(store, SystemClock()).ensure_default_org()
    row = {"id": "team_secret", "org_id": DEFAULT_ORG_ID, "name": "acme-secret", "created_at": 0}
    with store.begin() as conn:
        conn.execute(teams.insert().values(**row))
    with pytest.raises(StoreError) as refused, store.begin() as conn:
        conn.execute(teams.insert().values(**row))
    message = refused.value.message
    assert "IntegrityError" in message
    for leak in ("INSERT", "teams", "acme-secret", "team_secret", "[SQL"):
        assert leak not in message, message
