"""The simulator as a raw ASGI application: routing, faults, answers.

All state (prompt cache, rate-limit buckets, the fault generator, id
counters) lives on the :class:`SimApp` object; nothing is kept in module
globals, so several simulators can run in one process.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson

from corral.clock import Clock, SystemClock
from corral.errors import ConfigError, InvalidRequest
from corral.sim.cache import PrefixCache
from corral.sim.chat import chat_frames, chat_json, parse_chat
from corral.sim.config import SimConfig
from corral.sim.delivery import (
    SSE_HEADERS,
    Channel,
    Headers,
    Pace,
    Receive,
    Scope,
    Send,
    StreamStats,
    deliver_json,
    deliver_stream,
)
from corral.sim.faults import (
    ErrorReply,
    ErrorShape,
    context_error,
    fault_error,
    render_error,
    timeout_error,
)
from corral.sim.gemini import (
    ACTIONS,
    GeminiPath,
    gemini_count,
    gemini_frames,
    gemini_json,
    gemini_malformed,
    match_path,
    model_entry,
    models_body,
    parse_gemini,
)
from corral.sim.generate import (
    Phrasebook,
    Reply,
    default_reply,
    request_digest,
    scripted_reply,
    structured_reply,
)
from corral.sim.messages import messages_frames, messages_json, parse_messages
from corral.sim.options import FaultKind, ModelOptions, parse_faults, parse_options
from corral.sim.ratelimit import RateLimiter
from corral.sim.request import Protocol, SimRequest
from corral.sim.responses import parse_responses, responses_frames, responses_json
from corral.sim.script import Script, load_script, parse_script
from corral.sim.wire import Frame, Meta, Usage

MAX_BODY_BYTES = 64 * 1024 * 1024
_JSON: Headers = [(b"content-type", b"application/json")]
_PARSERS: dict[str, Callable[[Any], SimRequest]] = {
    "chat": parse_chat,
    "responses": parse_responses,
    "messages": parse_messages,
    "count_tokens": lambda body: parse_messages(body, count_only=True),
}
_SHAPES: dict[Protocol, ErrorShape] = {
    "chat": "openai",
    "responses": "openai",
    "messages": "anthropic",
    "gemini": "google",
}
_ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "count_tokens",
}
_ID_PREFIX = {
    "chat": "chatcmpl-sim",
    "responses": "resp_sim",
    "messages": "msg_sim",
    "gemini": "gemini-sim",
}
_TOO_LARGE = ErrorReply(413, "too_large", "request body too large for the simulator")
_MALFORMED = {
    "chat": Frame(b'data: {"id": "corral-sim-malformed", "choices": [\n\n'),
    "responses": Frame(b'event: response.output_text.delta\ndata: {"type": "response.out\n\n'),
    "messages": Frame(b'event: content_block_delta\ndata: {"type": "content_block_del\n\n'),
}


class SimApp:
    """The ASGI callable serving the simulated endpoints (see ``docs/simulator.md``)."""

    def __init__(self, config: SimConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self.script = _resolve_script(config.script)
        self.cache = PrefixCache(
            min_tokens=config.cache_min_tokens,
            ttl_s=config.cache_ttl_s,
            max_entries=config.cache_entries,
        )
        self.limiter = RateLimiter()
        self.closing = asyncio.Event()
        self.streams = StreamStats()
        self._clock = clock or SystemClock()
        self._faults = random.Random(config.seed)
        self._ids = itertools.count(1)
        # A per-instance tag keeps ids unique across restarts of the simulator.
        self._tag = os.urandom(3).hex()
        self._models = _models_body(config.models, int(self._clock.now()))
        self._gemini_models = models_body(config.models, window=config.context_window)
        self._phrases = Phrasebook.standard()

    def close(self) -> None:
        """End every hung ``timeout``/``stall`` wait now, so the server can shut down."""
        self.closing.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, Channel(send, receive, self.closing, self.streams))
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, channel: Channel) -> None:
        method: str = scope["method"]
        path: str = scope["path"].rstrip("/") or "/"
        if not path.startswith("/v1") and path != "/":
            path = "/v1" + path  # clients whose base URL lacks the /v1 prefix
        gemini = match_path(path)
        if gemini is not None:
            await self._gemini(method, scope, gemini, channel)
            return
        route = _ROUTES.get(path)
        anthropic = (
            path.startswith("/v1/messages") or _header(scope, b"anthropic-version") is not None
        )
        shape: ErrorShape = "anthropic" if anthropic else "openai"
        if route is not None and method == "POST":
            body = await _read_body(channel.receive)
            if body is None:
                await self._error(channel, _TOO_LARGE, shape=shape)
                return
            count = _count_messages if route == "count_tokens" else None
            await self._generate(_PARSERS[route], scope, body, channel, shape=shape, count=count)
        elif method in ("GET", "HEAD") and path in ("/", "/v1"):
            await channel.respond(200, _JSON, b'{"service":"corral-sim","simulator":true}')
        elif method == "GET" and path == "/v1/models":
            await channel.respond(200, _JSON, self._models)
        elif method == "GET" and path.startswith("/v1/models/"):
            name = path.removeprefix("/v1/models/")
            await channel.respond(200, _JSON, _model_body(name, self.config.context_window))
        else:
            message = f"{method} {scope['path']} is not served by Corral's simulator"
            error = (
                ErrorReply(405, "method_not_allowed", message)
                if route
                else ErrorReply(404, "not_found", message)
            )
            await self._error(channel, error, shape=shape)

    async def _gemini(self, method: str, scope: Scope, call: GeminiPath, channel: Channel) -> None:
        """Google's routes: the model list and model, and the three ``:action`` calls."""
        where = f"{method} {scope['path']}"
        if not call.action and method == "GET":
            window = self.config.context_window
            found = orjson.dumps(model_entry(call.model, window=window)) if call.model else None
            await channel.respond(200, _JSON, found or self._gemini_models)
            return
        if call.action and call.action not in ACTIONS:
            served = ", ".join(ACTIONS)
            message = f"{where} is not served by Corral's simulator (it serves {served})"
            await self._error(channel, ErrorReply(404, "not_found", message), shape="google")
            return
        if method != "POST" or not call.action:
            verb = "POST" if call.action else "GET"
            message = f"{where} is not served by Corral's simulator: use {verb}"
            error = ErrorReply(405, "method_not_allowed", message)
            await self._error(channel, error, shape="google")
            return
        body = await _read_body(channel.receive)
        if body is None:
            await self._error(channel, _TOO_LARGE, shape="google")
            return
        sse = _query(scope, "alt") == "sse"

        def parse(data: Any) -> SimRequest:
            return parse_gemini(data, call.model, action=call.action, sse=sse)

        count = gemini_count if call.action == "countTokens" else None
        await self._generate(parse, scope, body, channel, shape="google", count=count)

    async def _generate(
        self,
        parse: Callable[[Any], SimRequest],
        scope: Scope,
        body: bytes,
        channel: Channel,
        *,
        shape: ErrorShape,
        count: Callable[[SimRequest], bytes] | None = None,
    ) -> None:
        """Parse, then answer: the token count when ``count`` is given, else a generation."""
        try:
            request = parse(_decode(body))
            options = _header_options(scope).over(request.options)
            script = _header_script(scope) or self.script
        except InvalidRequest as exc:
            await self._error(channel, ErrorReply(400, "invalid_request", exc.message), shape=shape)
            return
        if count is not None:
            await channel.respond(200, _JSON, count(request))
            return
        fault = self._draw_fault(options)
        hang_s = options.timeout_s if options.timeout_s is not None else self.config.fault_timeout_s
        error = self._refusal(request, options, fault)
        if error is not None:
            await self._error(channel, error, shape=shape)
            return
        if fault == "timeout":
            await self._time_out(channel, hang_s, shape=shape)
            return
        reply = self._reply(request, options, script)
        refused, limit_headers = self._admit(request, options, reply)
        if refused is not None:
            await self._error(channel, refused, shape=shape, extra=limit_headers)
            return
        await self._answer(request, reply, channel, options, fault, hang_s, limit_headers)

    def _refusal(
        self, request: SimRequest, options: ModelOptions, fault: FaultKind | None
    ) -> ErrorReply | None:
        """The error answer due before any generation: an injected fault or a full context."""
        shape = _SHAPES[request.protocol]
        if fault is not None:
            retry = options.retry_after_s
            error = fault_error(
                fault,
                shape=shape,
                retry_after_s=self.config.retry_after_s if retry is None else retry,
            )
            if error is not None:
                return error
        window = options.ctx or self.config.context_window
        tokens = request.prompt.total
        if fault == "context":
            limit = min(window or tokens, tokens - 1)
            return context_error(tokens, limit, shape=shape, injected=True)
        if window is not None and tokens > window:
            return context_error(tokens, window, shape=shape, injected=False)
        return None

    def _draw_fault(self, options: ModelOptions) -> FaultKind | None:
        for spec in options.faults or self.config.default_faults:
            if spec.probability >= 1.0 or self._faults.random() < spec.probability:
                return spec.kind
        return None

    def _reply(self, request: SimRequest, options: ModelOptions, script: Script | None) -> Reply:
        digest = request_digest(request, self.config.seed)
        if request.structured is not None:
            # JSON-mode side requests (an agent's routing or next-speaker checks) get an
            # example of their schema; scripts play the conversation's own turns.
            return structured_reply(request, digest, self._phrases)
        if script is not None:
            conversation = script.find(request.base_model, request.opening_text)
            if conversation is not None:
                return scripted_reply(request, conversation, digest)
        want_tool = _wants_tool(request, options)
        return default_reply(request, digest, self._phrases, want_tool=want_tool)

    def _admit(
        self, request: SimRequest, options: ModelOptions, reply: Reply
    ) -> tuple[ErrorReply | None, Headers]:
        """Take from the model's rate-limit buckets: a 429 when empty, and the limit headers."""
        rpm = options.rpm or self.config.rpm
        tpm = options.tpm or self.config.tpm
        if not rpm and not tpm:
            return None, []
        anthropic = request.protocol == "messages"
        tokens = request.prompt.total + reply.output_tokens
        now = self._clock.monotonic()
        admission = self.limiter.admit(
            request.base_model, tokens, rpm=rpm, tpm=tpm, now=now, anthropic=anthropic
        )
        # Google sends no rate-limit headers; the others report their buckets.
        headers = [] if request.protocol == "gemini" else admission.headers
        if admission.retry_after_s is None:
            return None, headers
        wait = admission.retry_after_s
        message = (
            f"Rate limit reached for {request.base_model} (simulated by Corral). "
            f"Please try again in {wait:.3g}s."
        )
        return ErrorReply(429, "rate_limit", message, retry_after_s=wait), headers

    async def _answer(
        self,
        request: SimRequest,
        reply: Reply,
        channel: Channel,
        options: ModelOptions,
        fault: FaultKind | None,
        hang_s: float,
        extra: Headers,
    ) -> None:
        usage = self._usage(request, reply)
        number = next(self._ids)
        meta = Meta(
            response_id=f"{_ID_PREFIX[request.protocol]}{self._tag}{number:x}",
            created=int(self._clock.now()),
            model=request.model,
            request_id=f"req_sim{self._tag}{number:x}",
        )
        headers = [*_request_id_header(request, meta.request_id), *extra]
        pace = self._pace(options)
        chunk = self.config.chunk_words
        if request.stream:
            frames = _frames(request, reply, usage, meta, chunk)
            malformed = _malformed(request)
            kind = _JSON if request.json_array else SSE_HEADERS
            await deliver_stream(
                channel, headers, frames, pace, fault, hang_s, malformed, kind=kind
            )
            return
        data = _json(request, reply, usage, meta)
        await deliver_json(channel, [*_JSON, *headers], data, pace, usage.output, fault, hang_s)

    def _usage(self, request: SimRequest, reply: Reply) -> Usage:
        now = self._clock.monotonic()
        if request.protocol == "messages":
            cache = self.cache.anthropic(f"anthropic:{request.base_model}", request.prompt, now)
        elif request.protocol == "gemini":
            # Gemini's implicit caching reports exact cached counts, not 128-token steps.
            cache = self.cache.openai(
                f"gemini:{request.base_model}", request.prompt, now, granule=1
            )
        else:
            cache = self.cache.openai(f"openai:{request.base_model}", request.prompt, now)
        return Usage(
            prompt=request.prompt.total,
            cache_read=cache.read,
            cache_write=cache.written,
            output=reply.output_tokens,
            reasoning=reply.reasoning_tokens,
        )

    def _pace(self, options: ModelOptions) -> Pace:
        ttft = self.config.ttft_ms if options.ttft_ms is None else options.ttft_ms
        tps = self.config.tokens_per_second if options.tps is None else options.tps
        return Pace(ttft_s=ttft / 1000.0, tps=tps)

    async def _time_out(self, channel: Channel, hang_s: float, *, shape: ErrorShape) -> None:
        ended = await channel.hang(hang_s)
        if ended == "elapsed":
            await self._error(channel, timeout_error(), shape=shape)
        elif ended == "closing":
            await channel.drop()

    async def _error(
        self,
        channel: Channel,
        error: ErrorReply,
        *,
        shape: ErrorShape,
        extra: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        request_id = f"req_sim{self._tag}{next(self._ids):x}"
        data, headers = render_error(error, shape=shape, request_id=request_id)
        id_header = b"request-id" if shape == "anthropic" else b"x-request-id"
        headers += [(id_header, request_id.encode()), *extra]
        await channel.respond(error.status, headers, data)


def create_sim_app(config: SimConfig | None = None, *, clock: Clock | None = None) -> SimApp:
    """Build the simulator's ASGI app; a script given as a path is loaded (and validated) now."""
    return SimApp(config or SimConfig(), clock=clock)


def _resolve_script(script: Script | str | Path | None) -> Script | None:
    if script is None or isinstance(script, Script):
        return script
    return load_script(script)


def _frames(request: SimRequest, reply: Reply, usage: Usage, meta: Meta, chunk: int) -> list[Frame]:
    if request.protocol == "chat":
        return chat_frames(
            reply, usage, meta, include_usage=request.include_usage, chunk_words=chunk
        )
    if request.protocol == "responses":
        return responses_frames(request, reply, usage, meta, chunk_words=chunk)
    if request.protocol == "gemini":
        return gemini_frames(
            reply,
            usage,
            meta,
            chunk_words=chunk,
            thoughts=request.include_thoughts,
            json_array=request.json_array,
        )
    return messages_frames(reply, usage, meta, chunk_words=chunk)


def _malformed(request: SimRequest) -> Frame:
    if request.protocol == "gemini":
        return gemini_malformed(json_array=request.json_array)
    return _MALFORMED[request.protocol]


def _json(request: SimRequest, reply: Reply, usage: Usage, meta: Meta) -> bytes:
    if request.protocol == "chat":
        return chat_json(reply, usage, meta)
    if request.protocol == "responses":
        return responses_json(request, reply, usage, meta)
    if request.protocol == "gemini":
        return gemini_json(reply, usage, meta, thoughts=request.include_thoughts)
    return messages_json(reply, usage, meta)


def _count_messages(request: SimRequest) -> bytes:
    return orjson.dumps({"input_tokens": request.prompt.total})


def _wants_tool(request: SimRequest, options: ModelOptions) -> bool:
    """Whether the default answer is a tool call rather than text."""
    if not request.tools or request.tool_choice == "none":
        return False
    if request.tool_choice in ("required", "tool"):
        return True
    asked = options.tool_call if options.tool_call is not None else "tool" in request.base_model
    return asked and not request.after_tool_result


def _request_id_header(request: SimRequest, request_id: str) -> Headers:
    name = b"request-id" if request.protocol == "messages" else b"x-request-id"
    return [(name, request_id.encode())]


def _decode(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or ``None`` when it exceeds :data:`MAX_BODY_BYTES`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _query(scope: Scope, name: str) -> str | None:
    """The first value of query parameter ``name``, or ``None``."""
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return values[0] if values else None


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _header_options(scope: Scope) -> ModelOptions:
    """Options from ``x-sim-*`` headers; they win over the model name's options."""
    values: dict[str, Any] = {}
    text: str | None = None
    for key, raw in scope["headers"]:
        if not key.startswith(b"x-sim-"):
            continue
        value = raw.decode("latin-1").strip()
        try:
            if key == b"x-sim-options":
                text = value
            elif key == b"x-sim-fault":
                values["faults"] = parse_faults(value)
            elif key == b"x-sim-ttft-ms":
                values["ttft_ms"] = float(value)
            elif key == b"x-sim-tps":
                values["tps"] = float(value)
            elif key == b"x-sim-tool-call":
                values["tool_call"] = value.lower() not in ("0", "false", "no", "off")
        except ValueError as exc:
            raise InvalidRequest(f"header {key.decode()}: {exc}") from exc
    try:
        base = parse_options(text) if text else ModelOptions()
    except ValueError as exc:
        raise InvalidRequest(f"header x-sim-options: {exc}") from exc
    return ModelOptions(**values).over(base) if values else base


def _header_script(scope: Scope) -> Script | None:
    raw = _header(scope, b"x-sim-script")
    if raw is None:
        return None
    try:
        return parse_script(orjson.loads(raw), source="x-sim-script header")
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"header x-sim-script is not valid JSON: {exc}") from exc
    except ConfigError as exc:
        raise InvalidRequest(exc.message) from exc


def _model_body(name: str, window: int | None) -> bytes:
    # Google's fields too: google-genai with api_version="v1" gets a model here.
    return orjson.dumps({**_model_entry(name, 0), **model_entry(name, window=window)})


def _model_entry(name: str, created: int) -> dict[str, Any]:
    # One entry that both SDKs parse: OpenAI's (object, created, owned_by) and
    # Anthropic's (type, display_name, created_at).
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "corral-sim",
        "type": "model",
        "display_name": f"{name} (Corral simulator)",
        "created_at": "1970-01-01T00:00:00Z",
    }


def _models_body(names: tuple[str, ...], created: int) -> bytes:
    data = [_model_entry(name, created) for name in names]
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "has_more": False,
            "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None,
        }
    )
