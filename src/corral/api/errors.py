"""Errors of the admin API, all in one shape: ``{"error": {"type": ..., "message": ...}}``.

``CorralError`` subclasses keep their status. Request validation failures (a
field of the wrong type, out of range, NaN or infinite; a body that is not
JSON) are 400 with a message naming the fields, as the gateway's protocols answer;
unknown routes and methods keep Starlette's 404 and 405. Anything else is a bug:
it is logged with its traceback and answered with a 500 that reveals nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.errors import CorralError

log = logging.getLogger(__name__)

_HTTP_TYPES = {404: "not_found_error", 405: "method_not_allowed"}


def error_response(
    status: int, type_: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    # Messages may quote caller input; lone surrogates in it would not encode.
    safe = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse(
        {"error": {"type": type_, "message": safe}}, status_code=status, headers=headers
    )


def install_error_handlers(api: FastAPI) -> None:
    api.add_exception_handler(CorralError, _corral_error)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(StarletteHTTPException, _http_error)
    api.add_exception_handler(Exception, _unexpected)


async def _corral_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(CorralError, exc)
    headers = None
    if exc.retry_after is not None:
        headers = {"retry-after": str(max(1, round(exc.retry_after)))}
    return error_response(exc.status, exc.code, exc.message, headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    errors = cast(RequestValidationError, exc).errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        return error_response(
            400, "invalid_request_error", "the request body is not valid JSON; send a JSON object"
        )
    return error_response(400, "invalid_request_error", describe_validation(errors))


def describe_validation(errors: Sequence[Any]) -> str:
    """One line naming each bad field (up to three) and what is wrong with it."""
    parts = []
    for err in errors[:3]:
        loc = [str(p) for p in err.get("loc", ())]
        where, field = (loc[0], ".".join(loc[1:])) if loc else ("body", "")
        parts.append(f"{where} field {field or '(whole body)'!r}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "invalid request: " + "; ".join(parts) + more


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(StarletteHTTPException, exc)
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"no such API route: {request.method} {request.url.path}; see /api/v1/docs"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    headers = dict(exc.headers) if exc.headers else None
    return error_response(
        exc.status_code, _HTTP_TYPES.get(exc.status_code, "http_error"), message, headers
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("admin API error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error; the server log has the details")
