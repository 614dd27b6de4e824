"""Google Gemini (``generateContent``): routes, keys, usage, the stream meter, errors,
token counting and the model list.

Google names the model and whether to stream in the path
(``/v1beta/models/{model}:streamGenerateContent?alt=sse``), so a request body carries
neither; the same routes are served under ``/v1/``, which the google-genai SDK 3.x uses.
Field names are read in both proto-JSON spellings (``maxOutputTokens`` and
``max_output_tokens``): Google's servers accept both, the SDKs send camelCase.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import orjson

from corral.asgi import bearer_or_api_key
from corral.errors import CorralError, InvalidRequest
from corral.protocols.base import (
    Adapter,
    ModelInfo,
    Outcome,
    Route,
    StreamMeter,
    Usage,
    event_data,
    int_or_zero,
    json_object,
    str_or_none,
)

PATH = "/v1beta/models/{model}:generateContent"
_PREFIXES = ("/v1beta/models", "/v1/models")
_ACTIONS = {
    "generateContent": ("generate", False),
    "streamGenerateContent": ("generate", True),
    "countTokens": ("count_tokens", None),
}
_METHODS = ["generateContent", "streamGenerateContent", "countTokens"]

# google.rpc canonical codes for the HTTP statuses Corral answers with.
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "RESOURCE_EXHAUSTED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
    529: "UNAVAILABLE",
}
_NAME_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ABORTED": 409,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "DATA_LOSS": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}

_SNAKE = re.compile(r"_([a-z])")


def camel(key: str) -> str:
    """``max_output_tokens`` → ``maxOutputTokens`` (camelCase keys come back unchanged)."""
    return _SNAKE.sub(lambda m: m.group(1).upper(), key) if "_" in key else key


def fields(obj: dict[str, Any]) -> dict[str, Any]:
    """One level of a proto-JSON object with its keys in camelCase (values untouched: they
    may be the caller's own data, such as function arguments or schemas)."""
    if not any("_" in key for key in obj):
        return obj
    return {camel(key): value for key, value in obj.items()}


def get(obj: dict[str, Any], name: str) -> Any:
    """``obj[name]`` in either spelling (``name`` is camelCase)."""
    value = obj.get(name)
    if value is None and name != name.lower():
        value = obj.get(re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name))
    return value


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, "UNKNOWN")


def name_status(code: Any, name: Any) -> int:
    """The HTTP status of a Google error object (its ``code``, else its ``status`` name)."""
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600:
        return code
    return _NAME_STATUS.get(name, 500) if isinstance(name, str) else 500


def gemini_usage(u: dict[str, Any]) -> Usage:
    """``usageMetadata`` in Corral's columns.

    Google's ``promptTokenCount`` includes ``cachedContentTokenCount``;
    ``toolUsePromptTokenCount`` (tool results Google fed the model itself) is input too;
    ``candidatesTokenCount`` excludes ``thoughtsTokenCount``.
    """
    cached = int_or_zero(get(u, "cachedContentTokenCount"))
    prompt = int_or_zero(get(u, "promptTokenCount")) + int_or_zero(
        get(u, "toolUsePromptTokenCount")
    )
    return Usage(
        input=max(0, prompt - cached),
        cached_input=cached,
        output=int_or_zero(get(u, "candidatesTokenCount")),
        reasoning=int_or_zero(get(u, "thoughtsTokenCount")),
    )


def google_error(exc: CorralError) -> bytes:
    """Google's error shape: ``{"error": {"code", "message", "status"}}``."""
    return orjson.dumps(
        {"error": {"code": exc.status, "message": exc.message, "status": status_name(exc.status)}}
    )


def stream_error(exc: CorralError) -> bytes:
    """The error that ends a Google stream: the bare error object on its own line, as
    Google sends it, not a ``data:`` event. Older JavaScript SDKs (Gemini CLI bundles
    one) raise with the status only when a read is a bare JSON error (and on bytes left
    without an event end otherwise); the Python SDK and JavaScript 3.6 read both."""
    return google_error(exc) + b"\n"


def stream_payload(event: bytes) -> bytes | None:
    """The JSON of one Google stream event: its ``data:`` line, or a bare JSON object (how
    Google sends an error inside a 200 stream)."""
    payload = event_data(event)
    if payload is None and event.lstrip().startswith(b"{"):
        return event.strip()
    return payload


def first_candidate(body: dict[str, Any]) -> dict[str, Any] | None:
    candidates = body.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        return candidates[0]
    return None


class GeminiWire(Adapter):
    """What the gateway reads from Gemini requests and responses (conversions live in the
    subclass, ``gemini.GeminiAdapter``)."""

    name = "gemini"
    family = "google"
    path = PATH
    max_field = "maxOutputTokens"

    def route(self, method: str, path: str) -> Route | None:
        """``/v1beta/models[/{model}]`` (the list, one model), and
        ``/v1beta/models/{model}:{action}`` or ``/v1/models/{model}:{action}``.

        ``GET /v1/models`` and ``/v1/models/{model}`` stay OpenAI's. A ``models/`` prefix
        on the model name is stripped; an unknown action is not this protocol's route.
        """
        for prefix in _PREFIXES:
            if path == prefix:
                return Route(self, "models") if prefix == "/v1beta/models" else None
            if path.startswith(prefix + "/"):
                return self._model_route(path[len(prefix) + 1 :], beta=prefix == "/v1beta/models")
        return None

    def _model_route(self, rest: str, *, beta: bool) -> Route | None:
        model, colon, action = rest.rpartition(":")
        if not colon:
            return Route(self, "models", model=_model_name(rest) or None) if beta else None
        found = _ACTIONS.get(action)
        if found is None:
            return None
        return Route(self, found[0], model=_model_name(model) or None, stream=found[1])

    def api_key(self, headers: list[tuple[bytes, bytes]], query: bytes) -> str | None:
        """``x-goog-api-key``, else ``?key=``, else ``Authorization: Bearer`` / ``x-api-key``."""
        for name, value in headers:
            if name == b"x-goog-api-key":
                token = value.decode("latin-1").strip()
                if token:
                    return token
        if query and b"key=" in query:
            keys = parse_qs(query.decode("latin-1")).get("key")
            if keys and keys[0].strip():
                return keys[0].strip()
        return bearer_or_api_key(headers)

    def check(self, body: dict[str, Any], route: Route) -> tuple[str, bool]:
        """The model and streaming come from the path; the body needs ``contents``."""
        model = self._model(route)
        if not isinstance(body.get("contents"), list):
            raise InvalidRequest("contents: required, a list of Content objects")
        if route.stream and parse_qs(route.query.decode("latin-1")).get("alt") != ["sse"]:
            raise InvalidRequest(
                "alt: streamGenerateContent without ?alt=sse asks for one JSON array; Corral "
                "streams Gemini answers as server-sent events: add ?alt=sse (the google-genai "
                "SDKs and Gemini CLI do)"
            )
        limit = self.max_tokens(body)
        if limit is not None and limit < 0:
            raise InvalidRequest("generationConfig.maxOutputTokens: must not be negative")
        return model, bool(route.stream)

    def check_count(self, body: dict[str, Any], route: Route) -> str:
        """countTokens takes ``contents`` or a whole ``generateContentRequest``."""
        model = self._model(route)
        inner = get(body, "generateContentRequest")
        if isinstance(inner, dict):
            body = inner
        if not isinstance(body.get("contents"), list):
            raise InvalidRequest(
                "contents: required, a list of Content objects (or a generateContentRequest)"
            )
        return model

    def _model(self, route: Route) -> str:
        if not route.model:
            raise InvalidRequest(
                "the model is missing from the path: POST /v1beta/models/{model}:generateContent"
            )
        return route.model

    def max_tokens(self, body: dict[str, Any]) -> int | None:
        config = get(body, "generationConfig")
        if not isinstance(config, dict):
            return None
        value = get(config, "maxOutputTokens")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest("generationConfig.maxOutputTokens: must be an integer")
        return value

    def set_max_tokens(self, body: dict[str, Any], value: int, provider_kind: str) -> None:
        key = "generation_config" if "generation_config" in body else "generationConfig"
        config = body.get(key)
        if not isinstance(config, dict):
            config = body[key] = {}
        field = "max_output_tokens" if "max_output_tokens" in config else "maxOutputTokens"
        config[field] = value

    def set_model(self, body: dict[str, Any], model: str) -> bool:
        """The model is named in the path (``upstream_path``). Only a countTokens body's
        ``generateContentRequest`` names it too: there it becomes the upstream's."""
        inner = body.get("generateContentRequest")
        if isinstance(inner, dict) and "model" in inner and inner["model"] != f"models/{model}":
            inner["model"] = f"models/{model}"
            return True
        return False

    def upstream_path(self, model: str, stream: bool, query: bytes) -> str:
        """Google's path for ``model``. The caller's query is never passed on: it may hold
        the caller's Corral key in ``key=``."""
        if stream:
            return f"/v1beta/models/{model}:streamGenerateContent?alt=sse"
        return f"/v1beta/models/{model}:generateContent"

    def count_path(self, model: str) -> str | None:
        """Google's own token-counting path for ``model``."""
        return f"/v1beta/models/{model}:countTokens"

    # -- responses ----------------------------------------------------------------

    def outcome(self, body: dict[str, Any]) -> Outcome:
        usage = get(body, "usageMetadata")
        candidate = first_candidate(body)
        return Outcome(
            usage=gemini_usage(usage) if isinstance(usage, dict) else None,
            response_id=str_or_none(get(body, "responseId")),
            model=str_or_none(get(body, "modelVersion")),
            finish_reason=str_or_none(get(candidate, "finishReason")) if candidate else None,
        )

    def meter(self, strip_usage: bool) -> StreamMeter:
        """Google streams carry no usage a client did not ask for: nothing is stripped."""
        return GeminiMeter()

    def error_body(self, exc: CorralError) -> bytes:
        return google_error(exc)

    def sse_error(self, exc: CorralError, sequence: int) -> bytes:
        return stream_error(exc)

    def count_text(self, body: dict[str, Any]) -> str:
        inner = get(body, "generateContentRequest")
        source = inner if isinstance(inner, dict) else body
        parts = [get(source, key) for key in ("contents", "systemInstruction", "tools")]
        return orjson.dumps(parts).decode()

    def count_body(self, tokens: int) -> dict[str, Any]:
        return {"totalTokens": tokens}

    def models_body(self, names: list[str], info: Callable[[str], ModelInfo]) -> dict[str, Any]:
        return {"models": [self.model_body(n, info) for n in names]}

    def model_body(self, name: str, info: Callable[[str], ModelInfo]) -> dict[str, Any]:
        model = info(name)
        return {
            "name": "models/" + name,
            "baseModelId": name,
            "version": "001",
            "displayName": name,
            "description": f"{name}, served by Corral",
            "inputTokenLimit": model.context_window,
            "outputTokenLimit": model.max_output,
            "supportedGenerationMethods": list(_METHODS),
        }


def _model_name(name: str) -> str:
    return name.removeprefix("models/")


class GeminiMeter(StreamMeter):
    """Parses the first event and those carrying a finish reason or an error.

    A Google stream has no terminal event: it is over when a candidate says why it
    stopped, and that event carries the final ``usageMetadata``. Google also puts running
    totals on every other event; parsing each would cost the hot path, so the latest one
    is kept as bytes and read only if ``outcome`` is asked for before the finish (a
    stream abandoned midway, an observer).
    """

    def __init__(self) -> None:
        super().__init__()
        self._first = True
        self._running: bytes | None = None  # the latest event with running usage, unread

    @property
    def outcome(self) -> Outcome:
        if self._running is not None:
            event, self._running = self._running, None
            data = json_object(event_data(event))
            usage = data.get("usageMetadata") if data else None
            if isinstance(usage, dict):
                self._outcome.usage = gemini_usage(usage)
        return self._outcome

    @outcome.setter
    def outcome(self, value: Outcome) -> None:
        self._outcome = value

    def inspect(self, event: bytes) -> bool:
        first, self._first = self._first, False
        if not (first or b'"finishReason"' in event or b'"error"' in event):
            if b'"usageMetadata"' in event:
                self._running = event
            return True
        self._running = None
        data = json_object(stream_payload(event))
        if data is None:
            return True
        self._read(data)
        return True

    def _read(self, data: dict[str, Any]) -> None:
        outcome = self._outcome
        error = data.get("error")
        if isinstance(error, dict):
            outcome.error = str_or_none(error.get("message")) or "error event"
            return
        if outcome.response_id is None:
            outcome.response_id = str_or_none(data.get("responseId"))
        if outcome.model is None:
            outcome.model = str_or_none(data.get("modelVersion"))
        usage = data.get("usageMetadata")
        if isinstance(usage, dict):
            outcome.usage = gemini_usage(usage)
        candidate = first_candidate(data)
        reason = candidate.get("finishReason") if candidate else None
        if isinstance(reason, str):
            outcome.finish_reason = reason
            self.done = True
