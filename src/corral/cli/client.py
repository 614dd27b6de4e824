"""The HTTP client the admin commands use to talk to a running Corral.

It reads ``CORRAL_URL`` (default ``http://127.0.0.1:4100``) and
``CORRAL_ADMIN_KEY`` (the org admin key, or a team admin key). Every failure
becomes a ``CLIError``: one line naming what went wrong, exit status 1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import click
import httpx

DEFAULT_URL = "http://127.0.0.1:4100"


class CLIError(click.ClickException):
    """A failure shown to the user as one line; ``corral`` exits with status 1."""

    exit_code = 1


class CorralClient:
    """A small synchronous client for ``/api/v1``; use as a context manager."""

    def __init__(
        self,
        url: str,
        key: str | None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self._key_set = bool(key)
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CorralClient:
        env = os.environ if environ is None else environ
        return cls(env.get("CORRAL_URL") or DEFAULT_URL, env.get("CORRAL_ADMIN_KEY") or None)

    def get(self, path: str, params: Mapping[str, str | None] | None = None) -> Any:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        return self.request("GET", path, params=clean)

    def post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body)

    def put(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("PUT", path, json=body)

    def delete(self, path: str, params: Mapping[str, str | None] | None = None) -> Any:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        return self.request("DELETE", path, params=clean)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call ``/api/v1{path}`` and return the decoded JSON answer (None for 204), or raise
        ``CLIError``."""
        response = self.raw(method, path, **kwargs)
        if response.status_code == 204:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise CLIError(
                f"Corral at {self.url} answered with something that is not JSON"
            ) from exc

    def raw(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Call ``/api/v1{path}`` and return the answer as it came (logs and artifacts are
        bytes), or raise ``CLIError``."""
        try:
            response = self._http.request(method, f"/api/v1{path}", **kwargs)
        except httpx.ConnectError as exc:
            raise CLIError(
                f"cannot reach Corral at {self.url}: is `corral serve` running? "
                "(set CORRAL_URL to point elsewhere)"
            ) from exc
        except httpx.HTTPError as exc:
            raise CLIError(f"request to Corral at {self.url} failed: {exc}") from exc
        if response.is_error:
            raise CLIError(self._describe(response))
        return response

    def _describe(self, response: httpx.Response) -> str:
        try:
            error = response.json()["error"]
            message = f"{error['message']} (HTTP {response.status_code}, {error['type']})"
        except (ValueError, KeyError, TypeError):
            message = f"Corral answered HTTP {response.status_code}: {response.text[:200]}"
        if response.status_code == 401 and not self._key_set:
            message += "; set CORRAL_ADMIN_KEY to the admin key `corral serve` printed"
        return message

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CorralClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
