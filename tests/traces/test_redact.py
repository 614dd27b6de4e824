"""Redaction of secrets, the size cap, and the metadata-only view of bodies."""

from __future__ import annotations

import hashlib
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.traces.redact import Redactor, Rule, body_metadata, prepare_body, redact

ANTHROPIC = "sk-ant-api03-" + "Ab3_" * 22 + "AA"
OPENAI_PROJ = "sk-proj-" + "xY9-" * 30
OPENAI_LEGACY = "sk-" + "T3BlbkFJ" * 6
CORRAL = "sk-corral-" + "q1W2e3R4t5Y6u7I8o9P0a1S2d3F4g5H6j7K8l9Z0"
AWS_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SESSION_ID = "ASIAY34FZKBOKMUTVV7A"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
GITHUB = "ghp_" + "a1B2c3D4e5F6" * 3
GITHUB_PAT = "github_pat_11ABCDEFG0" + "x" * 40
SLACK = "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOp"
GOOGLE = "AIzaSyD-" + "k" * 31
STRIPE = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"
STRIPE_RESTRICTED = "rk_live_" + "51H8aBcDeFgHiJkLmNoP"
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpM"
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF0qT\n"
    "bXl5c2VjcmV0a2V5bWF0ZXJpYWw=\n-----END RSA PRIVATE KEY-----"
)


@pytest.mark.parametrize(
    ("text", "kind", "secret"),
    [
        (f"key: {ANTHROPIC}!", "anthropic_key", ANTHROPIC),
        (f"use {OPENAI_PROJ} here", "openai_key", OPENAI_PROJ),
        (f"OPENAI {OPENAI_LEGACY}.", "openai_key", OPENAI_LEGACY),
        (f"curl -H 'x: {CORRAL}'", "corral_key", CORRAL),
        (f"id {AWS_ID} in use", "aws_access_key_id", AWS_ID),
        (f"({AWS_SESSION_ID})", "aws_access_key_id", AWS_SESSION_ID),
        (f"aws_secret_access_key = {AWS_SECRET}\n", "aws_secret_access_key", AWS_SECRET),
        (f'AWS_SECRET_ACCESS_KEY="{AWS_SECRET}"', "aws_secret_access_key", AWS_SECRET),
        (f"push with {GITHUB}", "github_token", GITHUB),
        (f"{GITHUB_PAT}", "github_token", GITHUB_PAT),
        (f"slack {SLACK} ok", "slack_token", SLACK),
        (f"maps key {GOOGLE}", "google_api_key", GOOGLE),
        (f"stripe {STRIPE}", "stripe_key", STRIPE),
        (f"stripe {STRIPE_RESTRICTED}", "stripe_key", STRIPE_RESTRICTED),
        (f"cookie session={JWT}; path=/", "jwt", JWT),
        ("Authorization: Bearer abcdefghijklmnopqrstu", "bearer", "abcdefghijklmnopqrstu"),
        ("authorization: bearer Zx81kq02", "bearer", "Zx81kq02"),
        ("Authorization: Basic dXNlcjpodW50ZXIy", "authorization", "dXNlcjpodW50ZXIy"),
        ("x-api-key: k3y-v4lue-0001\n", "api_key", "k3y-v4lue-0001"),
        (f"keyfile:\n{PEM}\n", "private_key", "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn"),
        ("postgresql://corral:hunter2@db:5432/corral", "url_password", "hunter2"),
        ("https://bot:p%40ss@example.com/x", "url_password", "p%40ss"),
        ("password=hunter2", "password", "hunter2"),
        ("DB_PASSWD: s3cr3t-value\n", "password", "s3cr3t-value"),
        ('{"password": "correct horse battery"}', "password", "correct horse battery"),
        ("client_secret = 'cs_abcdef'", "secret", "cs_abcdef"),
        ("SECRET_KEY=django-insecure-xyz", "secret", "django-insecure-xyz"),
        ('{"api_key": "abc123def"}', "api_key", "abc123def"),
        ("apikey: q9q9q9q9\n", "api_key", "q9q9q9q9"),
        ("GET /cb?access_token=ya29.a0Af&state=1", "token", "ya29.a0Af"),
        ('{"refresh_token": "1//0gLx"}', "token", "1//0gLx"),
        ("GITHUB_TOKEN=abcdef\n", "token", "abcdef"),
    ],
)
def test_each_kind_of_secret_is_redacted(text: str, kind: str, secret: str) -> None:
    """Each recognised secret is replaced by its kind's marker and counted."""
    out, count = redact(text)
    assert secret not in out
    assert f"[REDACTED:{kind}]" in out
    assert count >= 1


def test_key_names_stay_readable() -> None:
    """Key/value secrets lose only the value: the key, quotes and separator remain."""
    out, count = redact('{"client_secret": "abc", "user": "ann", "password": "pw1"}')
    secret, password = "[REDACTED:secret]", "[REDACTED:password]"
    assert out == f'{{"client_secret": "{secret}", "user": "ann", "password": "{password}"}}'
    assert count == 2
    assert redact("Authorization: Bearer abcdefghijklmnopqrst")[0] == (
        "Authorization: Bearer [REDACTED:bearer]"
    )
    assert redact("postgresql://corral:pw@db/x")[0] == (
        "postgresql://corral:[REDACTED:url_password]@db/x"
    )


def test_secrets_in_the_kept_part_of_a_match_are_redacted() -> None:
    """A token used as a URL's user name is redacted along with the URL's password."""
    out, count = redact(f"git clone https://{GITHUB}:x-oauth-basic@github.com/o/r")
    assert out == (
        "git clone https://[REDACTED:github_token]:[REDACTED:url_password]@github.com/o/r"
    )
    assert count == 2


def test_secrets_inside_json_encoded_text_are_redacted() -> None:
    """Secrets in JSON strings, and in JSON encoded inside a JSON string, are found."""
    tool_result = json.dumps({"password": "hunter2", "token": "tok-123", "pem": PEM})
    body = json.dumps({"messages": [{"role": "user", "content": tool_result}]})
    twice = json.dumps({"content": body})
    for text in (body, twice):
        out, count = redact(text)
        for secret in ("hunter2", "tok-123", "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn", "bXl5c2Vj"):
            assert secret not in out
        assert "password" in out
        assert "[REDACTED:password]" in out
        assert count == 3
        assert json.loads(out)  # still valid JSON
    assert '\\"password\\": \\"[REDACTED:password]\\"' in redact(body)[0]


def test_json_escaped_newline_before_a_key_does_not_hide_it() -> None:
    """A key right after a JSON-escaped newline (``\\n``) is still seen as a word start."""
    text = json.dumps(f"line one\n{ANTHROPIC}\n{AWS_ID}\n{GITHUB}")
    out, count = redact(text)
    assert count == 3
    for secret in (ANTHROPIC, AWS_ID, GITHUB):
        assert secret not in out


def test_unterminated_private_key_is_redacted_to_its_end() -> None:
    """A PEM block cut before its END line (a truncated body) is still redacted."""
    out, count = redact('"key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC')
    assert "MIIEvQ" not in out
    assert count == 1


@pytest.mark.parametrize(
    "text",
    [
        "token_count = 5",
        "max_tokens = 1024",
        '{"max_tokens": 4096, "tokens": 12, "input_tokens": 3}',
        '"usage": {"prompt_tokens": 10, "completion_tokens_details": {"reasoning_tokens": 0}}',
        "token: str\napi_key: str | None = None\n",
        "password = None",
        "token = make_token()",
        "api_key = self.api_key\n",
        "f(token=tok, secret=shared)",
        "if password == expected:",
        "The token: it expires in an hour, so refresh it.",
        "Keep your password secret and your secrets safe.",
        "the bearer of bad news; bearer tokens are opaque",
        "Use a task-management-and-scheduling-system for this",
        "risk-assessment-and-mitigation-strategies",
        "see https://example.com:8080/path and http://localhost:3000/",
        '"token": {"type": "string", "description": "The token"}',
        "password: [REDACTED:password]",
        "tokenizer = load_tokenizer()",
    ],
)
def test_ordinary_prose_and_code_are_left_alone(text: str) -> None:
    """Identifiers, numbers, schemas and prose that merely mention secrets are not redacted."""
    assert redact(text) == (text, 0)


def test_redaction_is_idempotent() -> None:
    """Redacting redacted text changes nothing and counts nothing."""
    once, count = redact(f'{{"password": "x1", "k": "{ANTHROPIC}"}} token={JWT}')
    assert count == 3
    assert redact(once) == (once, 0)


def test_a_custom_rule_set() -> None:
    """A ``Redactor`` of one's own rules redacts with them, anchored on any character."""
    redactor = Redactor([Rule("ticket", "TKT-", r"[0-9]{6}", anchor="-")])
    assert redactor.redact("see TKT-123456 and TKT-12") == ("see [REDACTED:ticket] and TKT-12", 1)
    with pytest.raises(ValueError, match="anchor"):
        Redactor([Rule("ticket", "TKT-", r"[0-9]{6}", anchor="#")])


_SECRETS = st.one_of(
    st.text("abcdefXYZ0123456789_-", min_size=40, max_size=60).map(lambda s: "sk-ant-api03-" + s),
    st.text("abcdefXYZ0123456789_-", min_size=40, max_size=60).map(lambda s: "sk-proj-" + s),
    st.text("abcdefXYZ0123456789_-", min_size=40, max_size=50).map(lambda s: "sk-corral-" + s),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", min_size=16, max_size=16).map(lambda s: "AKIA" + s),
    st.text("abcXYZ0123456789", min_size=36, max_size=40).map(lambda s: "ghp_" + s),
    st.text("abcXYZ0123456789-", min_size=20, max_size=30).map(lambda s: "xoxp-1" + s),
    st.text("abcXYZ0123456789_-", min_size=35, max_size=35).map(lambda s: "AIza" + s),
    st.text("abcXYZ0123456789_-", min_size=20, max_size=40).map(
        lambda s: f"eyJhbGciOiJub25lIn0.eyJ{s}.{s[:10]}"
    ),
)
_SEPARATORS = st.sampled_from([" ", "\n", "\\n", '"', "\t", ", ", "(", "=", ": ", "'"])


@settings(max_examples=300, deadline=None)
@given(
    before=st.text(max_size=80),
    after=st.text(max_size=80),
    secret=_SECRETS,
    left=_SEPARATORS,
    right=_SEPARATORS,
)
def test_planted_secrets_never_survive(
    before: str, after: str, secret: str, left: str, right: str
) -> None:
    """Whatever text surrounds a planted secret, the secret is gone from the output."""
    out, count = redact(before + left + secret + right + after)
    assert secret not in out
    assert count >= 1


# -- prepare_body -------------------------------------------------------------------------


def test_prepare_body_keeps_small_bodies_whole() -> None:
    """A body within the cap is stored redacted and whole; meta describes it."""
    text = '{"model": "m", "password": "pw"}'
    prepared = prepare_body(text, max_bytes=100)
    assert prepared.data == b'{"model": "m", "password": "[REDACTED:password]"}'
    assert prepared.meta == {
        "bytes": len(text),
        "stored": len(prepared.data),
        "sha256": hashlib.sha256(prepared.data).hexdigest(),
        "redactions": 1,
        "truncated": False,
    }


def test_digest_is_of_the_redacted_bytes_never_the_raw_text() -> None:
    """The sha256 is of what was stored, so it cannot confirm a guess of the secret."""
    text = f"key {ANTHROPIC}"
    prepared = prepare_body(text, max_bytes=1 << 20)
    assert prepared.meta["sha256"] == hashlib.sha256(prepared.data).hexdigest()
    assert prepared.meta["sha256"] != hashlib.sha256(text.encode()).hexdigest()


def test_truncation_cuts_at_a_character_boundary_with_a_marker() -> None:
    """A long body is cut on a whole UTF-8 character and ends with a marker of what was kept."""
    text = "é" * 100 + "€" * 100  # 2-byte then 3-byte characters
    full = len(text.encode())
    for limit in (1, 99, 200, 201, 301, 302):
        prepared = prepare_body(text, max_bytes=limit)
        body, marker = prepared.data.rsplit(b"\n", 1)
        kept = body.decode("utf-8")  # strict: no half character
        assert len(body) <= limit
        assert len(body) >= limit - 2
        assert text.startswith(kept)
        assert marker == f"[corral: body truncated: kept {len(body)} of {full} bytes]".encode()
        assert prepared.meta["truncated"] is True
        assert prepared.meta["bytes"] == full
        assert prepared.meta["stored"] == len(prepared.data)


def test_redaction_happens_before_the_cut() -> None:
    """A secret straddling the cap is redacted whole, never half-kept by the cut."""
    text = "x" * 50 + " " + ANTHROPIC
    prepared = prepare_body(text, max_bytes=60)
    assert b"sk-ant" not in prepared.data
    assert prepared.meta["redactions"] == 1
    assert prepared.data.startswith(b"x" * 50 + b" [REDACTED")


# -- body_metadata ---------------------------------------------------------------------------

PLANTED = "PLANTED-MESSAGE-TEXT"


def leaked(meta: dict[str, object]) -> bool:
    return PLANTED in orjson.dumps(meta).decode()


def test_metadata_of_an_anthropic_request() -> None:
    """Model, stream, message count, roles, tool names, max tokens; none of the text."""
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "stream": True,
        "system": [{"type": "text", "text": f"{PLANTED} system"}],
        "tools": [
            {"name": "Read", "description": PLANTED, "input_schema": {"type": "object"}},
            {"name": "Bash", "description": PLANTED, "input_schema": {"type": "object"}},
        ],
        "messages": [
            {"role": "user", "content": f"{PLANTED} password: hunter2\n"},
            {"role": "assistant", "content": [{"type": "text", "text": PLANTED}]},
            {"role": "user", "content": [{"type": "tool_result", "content": PLANTED}]},
        ],
    }
    text = json.dumps(body)
    meta = body_metadata(text)
    assert not leaked(meta)
    assert meta["format"] == "json"
    assert meta["bytes"] == len(text)
    assert meta["secrets"] == 1
    assert meta["model"] == "claude-sonnet-4-5"
    assert meta["stream"] is True
    assert meta["max_tokens"] == 32000
    assert meta["messages"] == 3
    assert meta["roles"] == {"user": 2, "assistant": 1}
    assert meta["tools"] == ["Read", "Bash"]
    assert meta["system"] is True
    assert meta["sha256"] == hashlib.sha256(redact(text)[0].encode()).hexdigest()


def test_metadata_of_openai_requests() -> None:
    """Chat tools are named by ``function.name``; Responses ``input`` items are counted."""
    chat = {
        "model": "gpt-4.1",
        "messages": [{"role": "system", "content": PLANTED}, {"role": "user", "content": PLANTED}],
        "tools": [{"type": "function", "function": {"name": "shell", "description": PLANTED}}],
        "max_completion_tokens": 100,
    }
    meta = body_metadata(json.dumps(chat))
    assert not leaked(meta)
    assert meta["tools"] == ["shell"]
    assert meta["max_completion_tokens"] == 100
    responses = {
        "model": "gpt-5-codex",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": PLANTED}]},
            {"type": "function_call_output", "call_id": "c1", "output": PLANTED},
        ],
        "tools": [{"type": "function", "name": "apply_patch"}, {"type": "web_search"}],
        "max_output_tokens": 2048,
        "stream": False,
    }
    meta = body_metadata(json.dumps(responses))
    assert not leaked(meta)
    assert meta["input"] == 2
    assert meta["roles"] == {"user": 1, "function_call_output": 1}
    assert meta["tools"] == ["apply_patch", "web_search"]
    assert meta["max_output_tokens"] == 2048


def test_metadata_of_a_json_response() -> None:
    """A response keeps its kind, stop reason, block types and usage numbers."""
    body = {
        "id": "msg_1",
        "type": "message",
        "model": "claude-haiku",
        "stop_reason": "tool_use",
        "content": [
            {"type": "text", "text": PLANTED},
            {"type": "tool_use", "input": {"x": PLANTED}},
        ],
        "usage": {"input_tokens": 10, "output_tokens": 5, "service_tier": PLANTED},
    }
    meta = body_metadata(json.dumps(body))
    assert not leaked(meta)
    assert meta["type"] == "message"
    assert meta["stop_reason"] == "tool_use"
    assert meta["content_types"] == {"text": 1, "tool_use": 1}
    assert meta["usage"] == {"input_tokens": 10, "output_tokens": 5}


def test_metadata_of_sse_streams() -> None:
    """An SSE stream keeps the number of events and their types, from ``event:`` or the data."""
    delta = f'data: {{"type": "content_block_delta", "text": "{PLANTED}"}}'
    anthropic = (
        'event: message_start\ndata: {"type": "message_start"}\n\n'
        f"event: content_block_delta\n{delta}\n\n"
        f"event: content_block_delta\n{delta}\n\n"
        'event: message_stop\ndata: {"type": "message_stop"}\n\n'
    )
    meta = body_metadata(anthropic)
    assert not leaked(meta)
    assert meta["format"] == "sse"
    assert meta["events"] == 4
    assert meta["event_types"] == {"content_block_delta": 2, "message_start": 1, "message_stop": 1}
    chunk = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": PLANTED}}]}
    openai = f"data: {json.dumps(chunk)}\n\n" * 3
    meta = body_metadata(openai + "data: [DONE]\n\n")
    assert not leaked(meta)
    assert meta["events"] == 4
    assert meta["event_types"] == {"chat.completion.chunk": 3, "done": 1}


def test_metadata_of_anything_else_is_its_size() -> None:
    """Plain text, broken JSON: size, digest and secret count only."""
    for text in (f"{PLANTED} token: abcdefgh\n", '{"model": "x", ' + PLANTED):
        meta = body_metadata(text)
        assert not leaked(meta)
        assert set(meta) == {"bytes", "sha256", "secrets", "format"}
        assert meta["format"] == "text"
        assert meta["bytes"] == len(text)


def test_metadata_keeps_no_free_text_in_name_fields() -> None:
    """A model or tool "name" that is really text (spaces, long) or a secret is not kept."""
    body = {"model": f"{PLANTED} with spaces", "tools": [{"name": f"{PLANTED} {PLANTED}"}]}
    meta = body_metadata(json.dumps(body))
    assert not leaked(meta)
    assert "model" not in meta
    assert meta["tools"] == ["other"]
    meta = body_metadata(json.dumps({"model": ANTHROPIC, "tools": [{"name": GITHUB}]}))
    assert "model" not in meta
    assert meta["tools"] == ["other"]
    assert meta["secrets"] == 2
