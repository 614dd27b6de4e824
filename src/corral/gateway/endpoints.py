"""The gateway's endpoints besides model calls: counting tokens and the model list."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import orjson

from corral.asgi import JSON_CT, Receive, Scope, Send, header, send_bytes
from corral.errors import ClientError, CorralError, UnknownModel
from corral.gateway.call import Call, response_headers, upstream_failure
from corral.gateway.client import ClientConnectionError
from corral.gateway.upstream import upstream_url
from corral.protocols import CHAT, MESSAGES, Adapter, Route
from corral.protocols.base import ModelInfo
from corral.tokens import count_tokens as count_offline

if TYPE_CHECKING:
    from corral.gateway.proxy import Gateway


async def count_tokens(
    gw: Gateway, route: Route, scope: Scope, receive: Receive, send: Send
) -> None:
    """Asked of the provider when the deployment speaks the protocol and it can count;
    otherwise counted offline (``corral.tokens``)."""
    wire = route.adapter
    call = Call(wire, scope)
    try:
        data, body = await gw._admit(call, route, scope, receive, counting=True)
    except ClientError as exc:
        await gw._reject(send, wire, exc, call)
        return
    deployment = call.deployment
    assert deployment is not None
    model = deployment.upstream_model
    path = wire.count_path(model)
    if path is not None and deployment.speaks(wire.name):
        if wire.set_model(data, model):
            body = orjson.dumps(data)
        call.t_up = time.perf_counter()
        try:
            headers = gw.upstream.headers(deployment, scope["headers"], {})
            response = await gw.upstream.post(upstream_url(deployment, path), body, headers)
            try:
                payload = await response.read()
            finally:
                response.release()
        except (CorralError, ClientConnectionError, TimeoutError) as exc:
            error = exc if isinstance(exc, CorralError) else upstream_failure(exc, "counting")
            await gw._reject(send, wire, error, call)
            return
        call.t_up_end = time.perf_counter()
        out = response_headers(response)
        out.extend(call.corral_headers(time.perf_counter()))
        await send_bytes(send, response.status, out, payload)
        return
    result = orjson.dumps(wire.count_body(count_offline(wire.count_text(data))))
    await send_bytes(send, 200, [JSON_CT, *call.corral_headers(time.perf_counter())], result)


def list_adapter(scope: Scope) -> Adapter:
    """Whose shape ``GET /v1/models`` answers in: Anthropic's SDK sends ``anthropic-version``."""
    return MESSAGES if header(scope, b"anthropic-version") is not None else CHAT


async def models(gw: Gateway, wire: Adapter, scope: Scope, send: Send, model: str | None) -> None:
    """The models this key may use, or one of them, in ``wire``'s shape."""
    call = Call(wire, scope)
    catalog = gw.catalog
    try:
        key = await gw.keys.authenticate(wire.api_key(scope["headers"], scope["query_string"]))
        names = [
            name
            for name in catalog.models
            if key.allowed_models is None or name in key.allowed_models
        ]
        if model is not None and model not in names:
            raise UnknownModel(f"model {model!r} does not exist or this key may not use it")
    except ClientError as exc:
        await gw._reject(send, wire, exc, call)
        return

    def info(name: str) -> ModelInfo:
        d = catalog.models[name]
        limit = d.max_output_tokens or gw.settings.quota_default_max_output_tokens
        return ModelInfo(owner=d.provider.name, context_window=d.context_window, max_output=limit)

    if model is not None:
        body = orjson.dumps(wire.model_body(model, info))
    else:
        body = orjson.dumps(wire.models_body(names, info))
    await send_bytes(send, 200, [JSON_CT, *call.corral_headers(time.perf_counter())], body)
