"""The HTTP client the commands use to talk to a running Corral.

It reads ``CORRAL_URL`` (default ``http://127.0.0.1:4100``) and the key from
``CORRAL_KEY``, else ``CORRAL_ADMIN_KEY``: any key, a person's, a team admin's
or the organisation admin's, and each command answers within what that key may
see. It is built on the standard library's ``urllib`` rather than httpx, whose
import alone costs more than the whole command may take. Every failure becomes
a ``CLIError``: one line naming what went wrong, exit status 1.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from http.client import HTTPException
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import click

DEFAULT_URL = "http://127.0.0.1:4100"
KEY_VARIABLES = ("CORRAL_KEY", "CORRAL_ADMIN_KEY")
"""Where the key is read from, first found wins."""


class CLIError(click.ClickException):
    """A failure shown to the user as one line; ``corral`` exits with status 1."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class Response:
    """An answer as it came: status, headers (names in any case) and body bytes."""

    status_code: int
    headers: Message
    content: bytes

    @property
    def is_error(self) -> bool:
        return self.status_code >= 400

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as it came (the API never sends one; a proxy in front might)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class CorralClient:
    """A small synchronous client for ``/api/v1``; use as a context manager."""

    def __init__(
        self,
        url: str,
        key: str | None,
        *,
        key_source: str = KEY_VARIABLES[0],
        opener: urllib.request.OpenerDirector | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise CLIError(f"CORRAL_URL must be an http:// or https:// URL, not {url!r}")
        self.url = url.rstrip("/")
        self._headers = {"authorization": f"Bearer {key}"} if key else {}
        self._key_set = bool(key)
        self._key_source = key_source
        self._timeout = timeout
        self._opener = opener or urllib.request.build_opener(_NoRedirects)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CorralClient:
        env = os.environ if environ is None else environ
        source = next((name for name in KEY_VARIABLES if env.get(name)), None)
        key = env[source] if source is not None else None
        return cls(env.get("CORRAL_URL") or DEFAULT_URL, key, key_source=source or KEY_VARIABLES[0])

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body)

    def put(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("PUT", path, json=body)

    def delete(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("DELETE", path, params=params)

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

    def raw(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        timeout: float | None = None,
    ) -> Response:
        """Call ``/api/v1{path}`` and return the answer as it came (logs and artifacts are
        bytes), or raise ``CLIError``. Parameters that are None are left out; a list is
        sent as the parameter repeated."""
        query = urlencode({k: v for k, v in (params or {}).items() if v is not None}, doseq=True)
        request = urllib.request.Request(  # noqa: S310 (the scheme is checked in __init__)
            f"{self.url}/api/v1{path}{'?' + query if query else ''}",
            method=method,
            headers=self._headers,
        )
        if json is not None:
            request.data = _json_bytes(json)
            request.add_header("content-type", "application/json")
        response = self._send(request, self._timeout if timeout is None else timeout)
        if response.is_error:
            raise CLIError(self._describe(response))
        return response

    def _send(self, request: urllib.request.Request, timeout: float) -> Response:
        try:
            with self._opener.open(request, timeout=timeout) as answer:
                return Response(answer.status, answer.headers, answer.read())
        except urllib.error.HTTPError as exc:  # an answer all the same: 4xx, 5xx, 3xx
            with exc:
                return Response(exc.code, exc.headers, exc.read())
        except urllib.error.URLError as exc:  # no answer: refused, unknown host, TLS...
            if isinstance(exc.reason, ConnectionError | socket.gaierror):
                raise CLIError(
                    f"cannot reach Corral at {self.url}: is `corral serve` running? "
                    "(set CORRAL_URL to point elsewhere)"
                ) from exc
            raise CLIError(f"request to Corral at {self.url} failed: {exc.reason}") from exc
        except TimeoutError as exc:
            raise CLIError(f"Corral at {self.url} did not answer within {timeout:g} s") from exc
        except (HTTPException, OSError) as exc:  # the connection broke mid-answer
            raise CLIError(f"request to Corral at {self.url} failed: {exc!r}") from exc

    def _describe(self, response: Response) -> str:
        try:
            error = response.json()["error"]
            message = f"{error['message']} (HTTP {response.status_code}, {error['type']})"
        except (ValueError, KeyError, TypeError):
            message = f"Corral answered HTTP {response.status_code}: {response.text[:200]}"
        if response.status_code == 401 and not self._key_set:
            message += (
                "; set CORRAL_KEY to your key (or CORRAL_ADMIN_KEY to the admin key "
                "`corral serve` printed)"
            )
        elif response.status_code in (401, 403):
            message += f"; the key used is the one in {self._key_source}"
        return message

    def close(self) -> None:
        self._opener.close()

    def __enter__(self) -> CorralClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _json_bytes(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()
