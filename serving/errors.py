"""One JSON error shape for every failure of the public API, declared in the OpenAPI document as it is sent."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
from bentoml.exceptions import ServiceUnavailable
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

RETRY_AFTER_S = 1
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # an x-request-id outside this is replaced, never echoed or logged
# The classifier is down, restarting, refusing (its batching deadline) or past ours: worth a retry. Anything else that
# escapes a handler is a bug, and a retry would only repeat it.
UNAVAILABLE = (aiohttp.ClientError, asyncio.TimeoutError, ServiceUnavailable)
log = logging.getLogger("sentiment.service")


class ErrorDetail(BaseModel):
    loc: list[str | int] = Field(description="Where in the request the problem is, e.g. ['body', 'texts', 3]")
    msg: str
    type: str


class ErrorBody(BaseModel):
    error: str = Field(description="What went wrong, in one sentence")
    detail: list[ErrorDetail] | None = Field(None, description="Validation errors, one per offending field")


class ApiError(Exception):
    """An error answered as `ErrorBody` with `status` (and Retry-After on 429/503, WWW-Authenticate on 401)."""

    def __init__(self, status: int, error: str):
        self.status, self.error = status, error


def _described(description: str) -> dict:
    return {"model": ErrorBody, "description": description}


UNAUTHORIZED = {401: _described("No API key, or not one of the service's (only when API keys are on)")}
ERROR_RESPONSES: dict[int | str, dict] = {
    400: _described("Malformed JSON or undecodable bytes"),
    413: _described("Request body larger than the limit"),
    415: _described("Content-Type is not application/json"),
    422: _described("JSON that breaks the request schema (types, lengths, blank texts, batch size)"),
    500: _described("A fault in the service (a bug): not worth a retry; logged with its traceback and request id"),
    503: _described("Overloaded or the model is not ready: retry after the Retry-After header's seconds"),
}


def error_response(
    status: int, error: str, detail: list[dict] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    headers = (headers or {}) | ({"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else {})
    headers |= {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    body = ErrorBody(error=error, detail=[ErrorDetail(**d) for d in detail] if detail else None)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def request_id(request: Request) -> str:
    """The client's `x-request-id` if it is a plain id (letters, digits, `._:-`, at most 128), else a fresh one; the
    same for the whole request (kept in its scope), so that an error names the id the request log would have."""
    state = request.scope.setdefault("state", {})
    if "request_id" not in state:
        sent = request.headers.get("x-request-id", "")
        state["request_id"] = sent if REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
    return state["request_id"]


@contextmanager
def classifier_call(what: str = "the classifier") -> Iterator[None]:
    """503 + Retry-After when `what` is unavailable (`UNAVAILABLE`); any other error goes on, as the bug it is."""
    try:
        yield
    except UNAVAILABLE as error:
        raise ApiError(503, f"{what} is unavailable ({type(error).__name__}); retry shortly") from error


async def require_json(request: Request) -> None:
    """415 for anything but a JSON body (multipart, form, text...), before the body is read (async: FastAPI runs a
    plain function in a thread)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, not {media_type or 'missing'!r}")


def install(app: FastAPI) -> None:
    """Turn every error FastAPI or the handlers raise into `ErrorBody`, with the statuses the OpenAPI declares."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e["type"] in ("json_invalid", "value_error.jsondecode") for e in errors):
            return error_response(400, "The body is not valid JSON")
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
        return error_response(422, f"{len(detail)} validation error(s) in the request", detail)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)  # 405 keeps its Allow

    app.add_middleware(Faults)


class Faults:
    """A bug anywhere below becomes a 500 in the `ErrorBody` shape, logged once with its traceback and the request's
    id (Starlette would answer plain text). Plain ASGI: `@app.middleware("http")` would wrap every request and
    response in extra tasks and streams (a measurable share of a lexical answer's time)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception as error:
            if started:  # part of an answer is out: nothing better to send than a broken connection
                raise
            reference = request_id(Request(scope))
            log.exception("internal error on %s %s (request %s)", scope["method"], scope["path"], reference)
            message = f"internal error ({type(error).__name__}); quote request id {reference}"
            await error_response(500, message, headers={"x-request-id": reference})(scope, receive, send)
