"""The gateway's endpoints besides model calls: ``count_tokens`` and the model list."""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

import orjson

from corral.errors import ClientError, CorralError, UnknownModel
from corral.gateway.call import Call, response_headers, upstream_failure
from corral.gateway.client import ClientConnectionError
from corral.gateway.http import JSON_CT, Receive, Scope, Send, api_key, header, send_bytes
from corral.gateway.upstream import upstream_url
from corral.gateway.wire import CHAT, MESSAGES
from corral.tokens import count_tokens as count_offline

if TYPE_CHECKING:
    from corral.gateway.proxy import Gateway

COUNT_TOKENS = "/v1/messages/count_tokens"


async def count_tokens(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    call = Call(MESSAGES, scope)
    try:
        data, body = await gw._admit(call, scope, receive, counting=True)
    except ClientError as exc:
        await gw._reject(send, MESSAGES, exc, call)
        return
    deployment = call.deployment
    assert deployment is not None
    if deployment.provider.kind in ("anthropic", "sim"):
        if deployment.upstream_model != call.model:
            data["model"] = deployment.upstream_model
            body = orjson.dumps(data)
        url = upstream_url(deployment, COUNT_TOKENS, scope["query_string"])
        call.t_up = time.perf_counter()
        try:
            headers = gw.upstream.headers(deployment, scope["headers"], {})
            response = await gw.upstream.post(url, body, headers)
            try:
                payload = await response.read()
            finally:
                response.release()
        except (CorralError, ClientConnectionError, TimeoutError) as exc:
            error = exc if isinstance(exc, CorralError) else upstream_failure(exc, "counting")
            await gw._reject(send, MESSAGES, error, call)
            return
        call.t_up_end = time.perf_counter()
        out = response_headers(response)
        out.extend(call.corral_headers(time.perf_counter()))
        await send_bytes(send, response.status, out, payload)
        return
    # An OpenAI-family deployment has no counting endpoint: count offline.
    text = orjson.dumps([data.get("system"), data.get("messages"), data.get("tools")])
    result = orjson.dumps({"input_tokens": count_offline(text.decode())})
    await send_bytes(send, 200, [JSON_CT, *call.corral_headers(time.perf_counter())], result)


async def models(gw: Gateway, scope: Scope, send: Send, model: str | None) -> None:
    """``GET /v1/models`` (what this key may use) or ``/v1/models/{id}``, in the caller's shape.

    Anthropic's SDK sends ``anthropic-version``; its list and objects differ from OpenAI's.
    """
    anthropic = header(scope, b"anthropic-version") is not None
    wire = MESSAGES if anthropic else CHAT
    call = Call(wire, scope)
    try:
        key = await gw.app.keys.authenticate(api_key(scope))
        names = [
            name
            for name in gw.app.catalog.models
            if key.allowed_models is None or name in key.allowed_models
        ]
        if model is not None and model not in names:
            raise UnknownModel(f"model {model!r} does not exist or this key may not use it")
    except ClientError as exc:
        await gw._reject(send, wire, exc, call)
        return
    shape = _anthropic_model if anthropic else functools.partial(_openai_model, gw)
    if model is not None:
        body = orjson.dumps(shape(model))
    elif anthropic:
        body = orjson.dumps(
            {
                "data": [shape(n) for n in names],
                "has_more": False,
                "first_id": names[0] if names else None,
                "last_id": names[-1] if names else None,
            }
        )
    else:
        body = orjson.dumps({"object": "list", "data": [shape(n) for n in names]})
    await send_bytes(send, 200, [JSON_CT, *call.corral_headers(time.perf_counter())], body)


def _openai_model(gw: Gateway, name: str) -> dict[str, Any]:
    owner = gw.app.catalog.models[name].provider.name
    return {"id": name, "object": "model", "created": 0, "owned_by": owner}


def _anthropic_model(name: str) -> dict[str, Any]:
    return {"type": "model", "id": name, "display_name": name, "created_at": "2026-01-01T00:00:00Z"}
