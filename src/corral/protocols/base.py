"""The adapter contract every wire protocol fills in, and what they share.

For each protocol: how to read the fields Corral acts on from a request, how
to read usage, ids and the finish reason from a response, and a stream meter
that walks SSE events as they pass and parses only the few events that carry
usage. Token columns come out non-overlapping: ``input`` excludes cache reads
and writes, ``output`` excludes reasoning.
"""

from __future__ import annotations

import hashlib
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import orjson

from corral.asgi import bearer_or_api_key
from corral.errors import CorralError, InvalidRequest, UpstreamError


@dataclass(slots=True)
class Usage:
    input: int = 0
    cached_input: int = 0
    cache_write: int = 0
    output: int = 0
    reasoning: int = 0


def int_or_zero(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(slots=True)
class Outcome:
    """What a response said about itself."""

    usage: Usage | None = None
    response_id: str | None = None
    model: str | None = None
    finish_reason: str | None = None
    error: str | None = None  # an error event inside a 200 stream


@dataclass(frozen=True, slots=True)
class Route:
    """What a request's method and path say: which adapter, which action, maybe the model.

    ``action`` is ``generate`` (a model call), ``count_tokens`` or ``models`` (the list, or
    one model when ``model`` is set). Google's protocol names the model and whether to
    stream in the path; the others leave ``model`` and ``stream`` None (read from the body).
    """

    adapter: Adapter
    action: str
    model: str | None = None
    stream: bool | None = None
    query: bytes = b""
    """The request's query string (Google's protocol says how to stream in it)."""


class StreamTranslator(Protocol):
    """Upstream SSE bytes in, another protocol's SSE bytes out (see ``protocols.streams``)."""

    outcome: Outcome

    @property
    def done(self) -> bool:
        """The translated stream is over: its terminal event or an error event is out."""

    def feed(self, chunk: bytes) -> bytes: ...

    def close(self) -> bytes: ...


class Adapter(ABC):
    """One wire protocol: its routes, where the model and key are, usage, errors, and the
    conversion of requests, responses and streams to and from the internal form.

    The internal form is the OpenAI Chat Completions shape (``protocols/__init__``
    documents it). A protocol reaches any other through it: client → internal →
    upstream on the way up, upstream → internal → client on the way back.
    """

    name: str = ""
    family: str = "openai"  # the error shape: "openai", "anthropic" or "google"
    path: str = ""
    """The route of a model call (for messages that tell a caller where to go)."""
    max_field = "max_tokens"

    # -- routes and what a request names ----------------------------------------

    def route(self, method: str, path: str) -> Route | None:
        """The route ``path`` is, if this protocol serves it (any method: 405 is the caller's)."""
        if path == self.path:
            return Route(self, "generate")
        return None

    def api_key(self, headers: list[tuple[bytes, bytes]], query: bytes) -> str | None:
        """The caller's key: ``Authorization: Bearer`` or ``x-api-key``."""
        return bearer_or_api_key(headers)

    def check(self, body: dict[str, Any], route: Route) -> tuple[str, bool]:
        """Validate what Corral reads; return ``(model, stream)``."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("'model' is required: a model name from GET /v1/models")
        stream = body.get("stream", False)
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise InvalidRequest("'stream' must be true or false")
        limit = self.max_tokens(body)
        if limit is not None and limit < 0:
            raise InvalidRequest("the maximum output tokens must not be negative")
        return model, stream

    def check_count(self, body: dict[str, Any], route: Route) -> str:
        """Validate a count-tokens request; return the model."""
        return self.check(body, route)[0]

    @abstractmethod
    def max_tokens(self, body: dict[str, Any]) -> int | None:
        """The request's cap on output tokens, if it sets one."""

    def set_max_tokens(self, body: dict[str, Any], value: int, provider_kind: str) -> None:
        """Cap the request's output at ``value`` tokens, in the field this protocol uses."""
        body[self.max_field] = value

    def set_model(self, body: dict[str, Any], model: str) -> bool:
        """Name the upstream model in the body; False when the protocol names it in the path."""
        if body.get("model") == model:
            return False
        body["model"] = model
        return True

    def upstream_path(self, model: str, stream: bool, query: bytes) -> str:
        """The provider's path (and query) for a model call: the caller's query passes on."""
        return self.path + ("?" + query.decode("latin-1") if query else "")

    # -- responses ----------------------------------------------------------------

    @abstractmethod
    def outcome(self, body: dict[str, Any]) -> Outcome:
        """Usage, ids and finish reason of a complete (non-streamed) response."""

    @abstractmethod
    def meter(self, strip_usage: bool) -> StreamMeter:
        """A fresh meter for one streamed response."""

    def error_body(self, exc: CorralError) -> bytes:
        """``exc`` in this protocol's error shape."""
        return openai_error(exc)

    def sse_error(self, exc: CorralError, sequence: int) -> bytes:
        """A well-formed error event ending a stream of this protocol (``sequence``: events
        already sent)."""
        return b"data: " + self.error_body(exc) + b"\n\n"

    def count_path(self, model: str) -> str | None:
        """The provider's own token-counting path for ``model``, when the protocol has one."""
        return None

    def count_text(self, body: dict[str, Any]) -> str:
        """What the model would read, as text, for counting tokens offline."""
        return orjson.dumps(body).decode()

    def count_body(self, tokens: int) -> dict[str, Any]:
        """A count-tokens answer."""
        return {"input_tokens": tokens}

    def models_body(self, names: list[str], info: Callable[[str], ModelInfo]) -> dict[str, Any]:
        """The model list in this protocol's shape."""
        return {"object": "list", "data": [self.model_body(n, info) for n in names]}

    def model_body(self, name: str, info: Callable[[str], ModelInfo]) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": info(name).owner}

    # -- the internal form -----------------------------------------------------------

    @abstractmethod
    def to_internal(self, body: dict[str, Any]) -> dict[str, Any]:
        """A request of this protocol in the internal form (raises ``InvalidRequest`` naming
        what the internal form cannot hold)."""

    @abstractmethod
    def from_internal(
        self, internal: dict[str, Any], *, default_max: int, provider_kind: str
    ) -> dict[str, Any]:
        """An internal-form request in this protocol (raises ``InvalidRequest`` naming what
        this protocol cannot hold); the model is set afterwards with ``set_model``."""

    @abstractmethod
    def response_to_internal(self, body: dict[str, Any], *, model: str) -> dict[str, Any]:
        """A whole response of this protocol in the internal form (``UpstreamError`` when it
        is malformed or cannot be carried)."""

    @abstractmethod
    def response_from_internal(self, internal: dict[str, Any], *, model: str) -> dict[str, Any]:
        """An internal-form response in this protocol, named ``model``."""

    @abstractmethod
    def stream_to_internal(self, model: str) -> StreamTranslator | None:
        """A translator from this protocol's stream to internal chunks (None: it is the
        internal form)."""

    @abstractmethod
    def stream_from_internal(self, model: str) -> StreamTranslator | None:
        """A translator from internal chunks to this protocol's stream (None: it is the
        internal form)."""

    # -- what stuck detectors compare -------------------------------------------------

    def turn(self, body: Mapping[str, Any]) -> Turn | None:
        """The request's last turn, hashed (see :class:`Turn`); None when ``body`` is not a
        request of this protocol at all (or the protocol does not say).

        Cheap and bounded: it reads only the last turn, within ``TURN_BYTES`` of text, and
        never raises, whatever the body holds."""
        return None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a model list says about one model."""

    owner: str
    context_window: int
    max_output: int


def max_field(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"'{name}' must be an integer")
        return value
    return None


def str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# -- streams -------------------------------------------------------------------


class StreamMeter(ABC):
    """Walks an SSE stream event by event, passing bytes through unchanged.

    ``feed`` returns the bytes to forward (whole events only; a partial event
    waits for its end) and whether the terminal event is among them, so the
    caller can make the record durable before the client sees the last byte.
    """

    def __init__(self) -> None:
        self.outcome = Outcome()
        self.done = False
        self.events = 0
        self._buf = b""
        self._sep = b"\n\n"

    def feed(self, chunk: bytes) -> tuple[bytes, bool]:
        buf = self._buf + chunk if self._buf else chunk
        if self.events == 0 and b"\r\n" in buf:
            self._sep = b"\r\n\r\n"
        sep = self._sep
        end = buf.rfind(sep)
        if end < 0:
            self._buf = buf
            return b"", False
        cut = end + len(sep)
        complete, self._buf = buf[:cut], buf[cut:]
        was_done = self.done
        events = complete.split(sep)[:-1]
        keep = [self.inspect(event) for event in events]
        self.events += len(events)
        out = (
            complete
            if all(keep)
            else b"".join(e + sep for e, k in zip(events, keep, strict=True) if k)
        )
        return out, self.done and not was_done

    def tail(self) -> bytes:
        """Whatever is left when the upstream closes (an event with no final blank line)."""
        rest, self._buf = self._buf, b""
        if rest.strip():
            self.inspect(rest.rstrip(b"\r\n"))
        return rest

    @abstractmethod
    def inspect(self, event: bytes) -> bool:
        """Read what metering needs from one event; return False to drop it."""


def event_data(event: bytes) -> bytes | None:
    """The payload of an event's ``data:`` line (Corral's upstreams send one per event)."""
    start = event.find(b"data:")
    if start < 0:
        return None
    end = event.find(b"\n", start)
    payload = event[start + 5 : end if end >= 0 else len(event)]
    return payload.strip()


def event_name(event: bytes) -> bytes:
    if event.startswith(b"event:"):
        end = event.find(b"\n")
        return event[6 : end if end >= 0 else len(event)].strip()
    return b""


def json_object(payload: bytes | None) -> dict[str, Any] | None:
    if not payload:
        return None
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def error_fields(body: bytes | dict[str, Any]) -> tuple[str | None, str | None]:
    """(message, type) from an OpenAI, Anthropic or Google error body, or its text."""
    data: Any = body
    if isinstance(body, bytes):
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            text = body.decode(errors="replace").strip()
            return (text[:500] or None), None
    if not isinstance(data, dict):
        return None, None
    error = data.get("error")
    if isinstance(error, str):
        return error, None
    source = error if isinstance(error, dict) else data
    message, kind = source.get("message"), source.get("type") or source.get("status")
    return (
        message if isinstance(message, str) and message else None,
        kind if isinstance(kind, str) and kind else None,
    )


def upstream_error(message: str, *, status: int, code: str | None = None) -> CorralError:
    """An upstream failure with the provider's status, to render in the client's shape."""
    return UpstreamError(message, upstream_status=status, code=code)


# -- error shapes ------------------------------------------------------------


def openai_error(exc: CorralError) -> bytes:
    """OpenAI's error shape."""
    return orjson.dumps(
        {
            "error": {
                "message": exc.message,
                "type": _OPENAI_TYPES.get(exc.status, exc.code),
                "param": None,
                "code": exc.code,
            }
        }
    )


def anthropic_error(exc: CorralError) -> bytes:
    """Anthropic's error shape."""
    kind = _ANTHROPIC_TYPES.get(exc.status, "api_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": exc.message}})


_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "timeout",
}

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


# -- the last turn -----------------------------------------------------------------

TURN_BYTES = 64 * 1024
"""Characters of string content hashed per turn at most: past it a string counts by its
length and its two ends (the first string to cross it keeps its first and last half)."""
TURN_ITEMS = 256
"""Messages walked back from the end at most: a longer turn is its last ``TURN_ITEMS``."""
TURN_PARTS = 256
"""Blocks or parts read per message at most (texts, tool calls and results)."""
_NODES = 4096  # JSON values walked per turn at most; past it a value counts as one marker
_NODE = 16  # what a value costs of the budget beside its characters (bounds the values read)
_DEPTH = 24  # nesting hashed at most; deeper values count as one marker
_ENDS = 16  # characters kept of each end of a string once the budget is spent
_INT_BITS = (1 << 256) - 1
_TEXT_TYPES = frozenset({"text", "input_text", "output_text"})
_blake2b = hashlib.blake2b


class Turn(NamedTuple):
    """A model request's last turn, as stuck detectors compare it (hashes, not text). A
    named tuple: one is made for every call the guards judge, and it is the cheapest
    immutable record Python makes."""

    digest: str
    """16 hex: the last turn, i.e. the latest assistant message (its text and tool calls)
    and everything after it (tool results, the user's text); the whole conversation when it
    has no assistant message yet. Equal digests: the same last turn was sent again."""
    actions: tuple[str, ...]
    """The latest assistant message's tool calls, in order, each ``name:`` + 12 hex of a hash
    of its arguments (canonical JSON: sorted keys; a string of JSON is parsed first)."""
    results: tuple[str, ...]
    """The tool results after it, in order, each 12 hex of a hash of its content."""
    failed: tuple[bool, ...]
    """Per result: the protocol marks it an error (Anthropic ``is_error``, Gemini a
    ``functionResponse.response`` holding an ``error`` key); False where it cannot say."""
    acted: bool | None
    """Whether the latest assistant message called a tool; None when there is none."""
    messages: int
    """How many messages (items, contents) the request holds: a sharp drop is a compaction."""


def turn_start(
    items: list[Any], assistant: Callable[[Any], bool], *, run: bool = False
) -> tuple[int, bool]:
    """Where the last turn starts in ``items``, and whether an assistant message starts it.

    Walks back from the end at most ``TURN_ITEMS`` items. ``run``: the turn starts at the
    first of the consecutive assistant-side items ending at the latest one (Responses items:
    reasoning, message and calls are one answer). Without an assistant message the turn is
    the whole conversation (its last ``TURN_ITEMS`` items)."""
    stop = max(0, len(items) - TURN_ITEMS)
    at = len(items) - 1
    while at >= stop and not assistant(items[at]):
        at -= 1
    if at < stop:
        return stop, False
    while run and at > stop and assistant(items[at - 1]):
        at -= 1
    return at, True


def text_of(content: Any) -> Any:
    """Content as its text when it is text (a string, or text blocks of any protocol: their
    texts joined, markers such as ``cache_control`` left out); other content as it is."""
    if not isinstance(content, list):
        return content
    texts: list[str] = []
    for block in content[:TURN_PARTS]:
        if not isinstance(block, dict):
            return content
        text, kind = block.get("text"), block.get("type", "text")
        if not (isinstance(text, str) and isinstance(kind, str) and kind in _TEXT_TYPES):
            return content
        texts.append(text)
    return "".join(texts) if len(content) <= TURN_PARTS else content


def _json_or_text(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text  # free-form input (a patch, a command line): hashed as the string


class TurnHasher:
    """Builds one :class:`Turn` from its parts, fed in order by a protocol's adapter.

    Values hash as canonical JSON (sorted keys), within one budget per turn: at most
    ``TURN_BYTES`` characters of strings, ``_NODES`` values and ``_DEPTH`` levels, so a
    hostile or giant body costs a bounded amount. Ids, signatures and reasoning are the
    adapter's to leave out: they change from call to call when nothing else does.
    """

    __slots__ = ("_digest", "_left", "_nodes", "actions", "failed", "results")

    def __init__(self) -> None:
        self._digest = hashlib.blake2b(digest_size=8)
        self._left = TURN_BYTES
        self._nodes = _NODES
        self.actions: list[str] = []
        self.results: list[str] = []
        self.failed: list[bool] = []

    def text(self, value: Any, role: Any = None) -> None:
        """Content that is neither a tool call nor a result (text, images), said by ``role``."""
        tag = (_ROLES.get(role) or _role_tag(role)) if isinstance(role, str) else b"t?\0"
        data = self._bytes(value)
        self._digest.update(b"%s%d:%s" % (tag, len(data), data))

    def action(self, name: Any, arguments: Any) -> None:
        """A tool call: ``arguments`` a value, or a string of JSON (parsed when it is one)."""
        digest = None
        if isinstance(arguments, str) and len(arguments) <= self._left:
            text, arguments = arguments, _json_or_text(arguments)
            if type(arguments) is dict or type(arguments) is list:
                # Parsed from at most ``len(text)`` characters of JSON: hashed as ``_bytes``
                # hashes a value within the budget, without the walk that sizes it first.
                try:
                    data = orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)
                except orjson.JSONEncodeError:
                    pass  # not plain JSON after all: ``_hash`` walks it
                else:
                    self._left -= len(text)
                    self._nodes -= 1
                    digest = _blake2b(data, digest_size=6).hexdigest()
        label = name[:128] if isinstance(name, str) else "?"
        if digest is None:
            digest = self._hash(arguments)
        action = f"{label}:{digest}"
        self.actions.append(action)
        self._digest.update(b"a" + action.encode("utf-8", "surrogatepass") + b"\0")

    def result(self, content: Any, failed: bool = False) -> None:
        """A tool's result, which the protocol marks ``failed`` or not."""
        if type(content) is str:  # most results: ``_hash``, less two calls
            self._nodes -= 1
            digest = _blake2b(self._string(content), digest_size=6).hexdigest()
        else:
            digest = self._hash(content)
        self.results.append(digest)
        self.failed.append(failed)
        self._digest.update((b"e" if failed else b"r") + digest.encode())

    def turn(self, messages: int, acted: bool) -> Turn:
        """The turn; ``acted``: an assistant message starts it (else ``acted`` is None)."""
        actions = tuple(self.actions)
        return Turn(
            self._digest.hexdigest(),
            actions,
            tuple(self.results),
            tuple(self.failed),
            bool(actions) if acted else None,
            messages,
        )

    def _hash(self, value: Any) -> str:
        """12 hex of a hash of ``value`` (as ``_bytes`` reads it)."""
        return _blake2b(self._bytes(value), digest_size=6).hexdigest()

    def _bytes(self, value: Any) -> bytes:
        """``value`` as canonical bytes: orjson's sorted-key JSON when the whole of it fits
        the budget (the common case, and the fast one), else a bounded walk."""
        kind = type(value)
        if kind is str:
            self._nodes -= 1
            return self._string(value)
        if kind is dict or kind is list:
            size = _size(value, self._left, 0)
            if size <= self._left:
                try:
                    data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
                except orjson.JSONEncodeError:
                    pass  # not plain JSON (lone surrogates, huge integers): walked below
                else:
                    self._left -= size
                    return data
        out: list[bytes] = []
        self._walk(value, out, 0)
        return b"".join(out)

    def _walk(self, value: Any, out: list[bytes], depth: int) -> None:
        """Sorted keys, sizes before contents. Exact types only: a JSON body holds no
        subclasses; anything else counts as its type name."""
        self._nodes -= 1
        kind = type(value)
        if kind is str:
            out.append(self._string(value))
        elif self._nodes < 0 or depth > _DEPTH:
            out.append(b"~")  # past the budget: counted, not read
        elif kind is dict:
            out.append(b"{%d" % len(value))
            for key in _keys(value, self._nodes):
                out.append(self._string(key) if type(key) is str else b"?")
                self._walk(value[key], out, depth + 1)
            out.append(b"}")
        elif kind is list or kind is tuple:
            out.append(b"[%d" % len(value))
            for item in value if len(value) <= self._nodes else value[: self._nodes]:
                self._walk(item, out, depth + 1)
            out.append(b"]")
        elif kind is int:
            out.append(b"i%x" % (value & _INT_BITS))
        elif value is None or kind is bool or kind is float:
            out.append(orjson.dumps(value))
        else:
            out.append(b"?" + kind.__name__.encode())

    def _string(self, text: str) -> bytes:
        size = len(text)
        if size <= self._left:
            self._left -= size
            return b"s%d:" % size + text.encode("utf-8", "surrogatepass")
        keep = max(self._left // 2, _ENDS)
        self._left = 0
        ends = text[:keep] + text[-keep:]
        return b"s%d~" % size + ends.encode("utf-8", "surrogatepass")


def _size(value: Any, limit: int, depth: int) -> int:
    """What hashing ``value`` whole costs: its strings' characters and ``_NODE`` per value.
    Stops early past ``limit``, and is past it for a value nested deeper than ``_DEPTH``."""
    kind = type(value)
    if kind is str:
        return _NODE + len(value)
    if kind is not dict and kind is not list and kind is not tuple:
        return _NODE
    if depth >= _DEPTH:
        return limit + 1
    total = _NODE
    for item in value.values() if kind is dict else value:
        # Strings, the common value, inline: a call per value is most of the cost here.
        total += _NODE + len(item) if type(item) is str else _size(item, limit - total, depth + 1)
        if total > limit:
            break
    if kind is dict:
        total += sum(len(key) for key in value if type(key) is str) if total <= limit else 0
    return total


def _keys(value: dict[Any, Any], most: int) -> list[Any]:
    """Up to ``most`` of a dict's keys, sorted (a JSON object's are strings; a mix that
    cannot be sorted keeps its string keys only)."""
    keys = value if len(value) <= most else list(itertools.islice(value, most))
    try:
        return sorted(keys)
    except TypeError:  # keys of mixed types: not JSON, only its string keys are read
        return sorted(k for k in keys if isinstance(k, str))


def _role_tag(role: str) -> bytes:
    return b"t" + role[:64].encode("utf-8", "surrogatepass") + b"\0"


_ROLES = {
    role: _role_tag(role)
    for role in ("user", "assistant", "system", "developer", "tool", "model", "function")
}
