"""The model, reached through the gateway's OpenAI Chat Completions endpoint.

Non-streaming: one ``POST {base_url}/chat/completions`` per turn. A 429, a 5xx
or a connection failure is retried a couple of times with a short backoff
(``Retry-After`` is honoured up to a few seconds); any other error answer ends
the run at once with the gateway's own message: a spent budget (402), a
revoked key (401) or a model the key may not use (403) will not get better by
asking again.

While a Corral guard warns the caller (issue 14), the gateway adds
``x-corral-guard-warning: <incident id>: <one-line message>`` to its answers, one
header line per warning; the client keeps those of its last answer in ``warnings``
for the loop to show the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from corral.agent.errors import GatewayError

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
RETRIES = 2
BACKOFF_S = 0.5
RETRY_AFTER_MAX_S = 5.0
TIMEOUT = httpx.Timeout(600.0, connect=10.0)  # a long answer from a slow model is normal
GUARD_WARNING_HEADER = "x-corral-guard-warning"
WARNING_MAX_CHARS = 500  # it goes into the model's conversation: one line, not a document


@dataclass(frozen=True, slots=True)
class GuardWarning:
    """A guard's warning to this caller: the incident it belongs to and what it says."""

    incident: str
    message: str


class ModelClient:
    """Calls the gateway as ``api_key``; ``http`` and ``sleep`` are injectable for tests.

    ``warnings`` are the guard warnings on the last answer the gateway gave (empty when it
    gave none), error answers included.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        http: httpx.Client,
        *,
        retries: int = RETRIES,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key = api_key
        self.http = http
        self.retries = retries
        self.sleep = sleep
        self.warnings: tuple[GuardWarning, ...] = ()

    def chat(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
        """The parsed answer to ``body``, or a GatewayError once retries are spent."""
        headers = {**headers, "authorization": f"Bearer {self.api_key}"}
        self.warnings = ()
        for attempt in range(self.retries + 1):
            try:
                response = self.http.post(self.url, json=body, headers=headers, timeout=TIMEOUT)
            except httpx.TransportError as exc:
                detail = str(exc) or type(exc).__name__
                failure = GatewayError(f"could not reach the gateway at {self.url}: {detail}")
                delay = BACKOFF_S * 2**attempt
            else:
                self.warnings = guard_warnings(response)
                if response.is_success:
                    return parsed_answer(response)
                failure = refusal(response)
                if response.status_code not in RETRY_STATUSES:
                    raise failure
                delay = retry_delay(response, BACKOFF_S * 2**attempt)
            if attempt == self.retries:
                raise failure
            self.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")


def parsed_answer(response: httpx.Response) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError as exc:
        raise GatewayError("the gateway's answer is not JSON", status=response.status_code) from exc
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not choices or not isinstance(choices[0].get("message"), dict):
        raise GatewayError("the gateway's answer has no message", status=response.status_code)
    return dict(answer)


def refusal(response: httpx.Response) -> GatewayError:
    """The gateway's error answer as a GatewayError carrying its message, status and code.

    Reads the OpenAI error shape ``{"error": {"message", "type", "code"}}``;
    anything else is quoted (cut) as it came.
    """
    message, code = "", None
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        message = str(error.get("message") or "")
        code = error.get("code") or error.get("type")
    if not message:
        message = response.text.strip()[:300] or response.reason_phrase
    return GatewayError(
        f"the gateway refused the call: {message}",
        status=response.status_code,
        code=str(code) if code else None,
    )


def guard_warnings(response: httpx.Response) -> tuple[GuardWarning, ...]:
    """The ``x-corral-guard-warning`` lines of ``response``, in order; blank ones skipped.

    A value without ``<incident id>: `` before its message has no incident (``""``).
    """
    found = []
    for value in response.headers.get_list(GUARD_WARNING_HEADER):
        incident, sep, message = value.partition(": ")
        if not sep or " " in incident.strip():
            incident, message = "", value
        message = " ".join(message.split())[:WARNING_MAX_CHARS]
        if message:
            found.append(GuardWarning(incident.strip(), message))
    return tuple(found)


def retry_delay(response: httpx.Response, default: float) -> float:
    try:
        return min(float(response.headers.get("retry-after", default)), RETRY_AFTER_MAX_S)
    except ValueError:
        return default
