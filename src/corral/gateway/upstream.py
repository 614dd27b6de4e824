"""Talking to providers: one pooled keep-alive client, provider auth, error classes.

``Upstream`` is injected into the gateway (a constructor argument), so tests and
benchmarks can point it anywhere. It never forwards the caller's own
credentials, and reads provider secrets from an injected environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import orjson

from corral.errors import UpstreamError, UpstreamTimeout
from corral.gateway.client import ClientConnectionError, HttpClient, Response
from corral.routing import Deployment, Provider

# Request headers a client may pass on to the provider. The caller's
# Authorization / x-api-key are Corral's keys and never leave the gateway.
FORWARD_REQUEST = frozenset(
    {
        b"anthropic-version",
        b"anthropic-beta",
        b"openai-beta",
        b"accept",
        b"user-agent",
        b"x-stainless-helper-method",
        b"x-goog-api-client",
    }
)
FORWARD_PREFIXES = (b"x-sim-",)

# Response headers worth passing back to the client.
FORWARD_RESPONSE = frozenset(
    {
        "retry-after",
        "retry-after-ms",
        "request-id",
        "x-request-id",
        "openai-processing-ms",
        "anthropic-organization-id",
    }
)


class Upstream:
    """A keep-alive HTTP client shared by every request of the process."""

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        max_connections: int = 1000,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._client = HttpClient(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_connections=max_connections,
        )
        self._environ = environ if environ is not None else os.environ

    async def start(self) -> None:
        await self._client.start()

    async def stop(self) -> None:
        await self._client.close()

    def secret(self, provider: Provider) -> str | None:
        if provider.api_key_env is None:
            return None
        value = self._environ.get(provider.api_key_env)
        if not value:
            # The operator's mistake, not the caller's: a 502 that says what to set.
            raise UpstreamError(
                f"provider {provider.name!r} has no secret: the environment variable "
                f"{provider.api_key_env} is not set on this Corral process",
                code="provider_misconfigured",
            )
        return value

    def headers(
        self,
        deployment: Deployment,
        client_headers: list[tuple[bytes, bytes]],
        extra: dict[str, str],
    ) -> dict[str, str]:
        """Headers for the upstream request: forwarded client headers plus provider auth."""
        # identity: metering reads the bytes as they pass, so never ask for compression
        out: dict[str, str] = {"content-type": "application/json", "accept-encoding": "identity"}
        for name, value in client_headers:
            if name in FORWARD_REQUEST or name.startswith(FORWARD_PREFIXES):
                out[name.decode("latin-1")] = value.decode("latin-1")
        provider = deployment.provider
        secret = self.secret(provider)
        if provider.kind == "anthropic":
            out.setdefault("anthropic-version", "2023-06-01")
            if secret:
                out["x-api-key"] = secret
        elif provider.kind == "google":
            if secret:
                out["x-goog-api-key"] = secret
        elif secret:
            out["authorization"] = f"Bearer {secret}"
        out.update(provider.headers)
        out.update(extra)
        return out

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Response:
        """Send a request and wait for the response headers; failures become ``UpstreamError``."""
        try:
            return await self._client.post(url, body, headers)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{_host(url)}: {exc or 'timed out'}") from exc
        except ClientConnectionError as exc:
            raise UpstreamError(f"cannot reach {_host(url)}: {exc}") from exc
        except ValueError as exc:  # a header or URL the client refuses to send
            raise UpstreamError(
                f"cannot send to {_host(url)}: {exc}", code="provider_misconfigured"
            ) from exc


def _host(url: str) -> str:
    return url.split("/", 3)[2] if url.count("/") >= 2 else url


def upstream_url(deployment: Deployment, path: str) -> str:
    """The provider's base URL and ``path`` (the adapter's, with its query)."""
    return deployment.provider.base_url + path


_CONTEXT_CODES = frozenset({"context_length_exceeded", "context_window_exceeded"})
_CONTEXT_WORDS = ("prompt is too long", "context length", "context window", "maximum context")
_POLICY_CODES = frozenset({"content_policy_violation", "content_filter"})
_POLICY_WORDS = ("content policy", "usage policy", "content management policy")


def classify(status: int, body: bytes) -> str:
    """Normalise an upstream failure into an error class (the fallback vocabulary).

    Status first; a 4xx is told apart by the error's ``code`` (OpenAI) or the words of its
    message (Anthropic), never by anything else the body happens to contain.
    """
    if status == 429:
        return "rate_limited"
    if status in (503, 529):
        return "overloaded"
    if status >= 500:
        return "server_error"
    code, message = _error_fields(body)
    if code in _CONTEXT_CODES or any(w in message for w in _CONTEXT_WORDS):
        return "context_window_exceeded"
    if code in _POLICY_CODES or any(w in message for w in _POLICY_WORDS):
        return "content_policy"
    if status in (401, 403):
        return "upstream_auth"
    return "invalid_request"


def _error_fields(body: bytes) -> tuple[str, str]:
    """The lower-cased ``code`` and ``message`` of an OpenAI- or Anthropic-shaped error."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "", body[:4096].decode("utf-8", "replace").lower()
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return "", ""
    return str(error.get("code") or "").lower(), str(error.get("message") or "").lower()


def error_message(body: bytes) -> str | None:
    """The message inside an OpenAI- or Anthropic-shaped error body, if there is one."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace") or None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        message = data["error"].get("message")
        return str(message)[:2000] if message is not None else None
    return None
