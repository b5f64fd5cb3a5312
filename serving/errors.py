"""One JSON error shape for every failure of the public API, declared in the OpenAPI document as it is sent.

BentoML answers an exception raised in an API with bodies of its own (a generic message for 5xx, a list for 4xx), so
the APIs answer theirs here (`in_error_shape`), the front door (`intake.py`) answers what it refuses before the API
runs, and `Faults` answers any other bug below it. `documented` adds these answers to BentoML's OpenAPI document.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
from bentoml.exceptions import ServiceUnavailable
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse
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

    def __init__(self, status: int, error: str, detail: list[dict] | None = None):
        self.status, self.error, self.detail = status, error, detail

    def response(self) -> JSONResponse:
        return error_response(self.status, self.error, self.detail)


UNAUTHORIZED = {401: "No API key, or not one of the service's (only when API keys are on)"}
ERROR_RESPONSES = {
    400: "Malformed JSON or undecodable bytes",
    408: "The request body did not arrive within the body deadline",
    413: "Request body larger than the limit",
    415: "Content-Type is not application/json",
    422: "JSON that breaks the request schema (types, lengths, blank texts, batch size, a mode the model lacks)",
    500: "A fault in the service (a bug): not worth a retry; logged with its traceback and request id",
    503: "Overloaded or the model is not ready: retry after the Retry-After header's seconds",
}


def error_response(
    status: int, error: str, detail: list[dict] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    headers = (headers or {}) | ({"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else {})
    headers |= {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    body = ErrorBody(error=error, detail=[ErrorDetail(**d) for d in detail] if detail else None)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def request_id(scope: Scope) -> str:
    """The client's `x-request-id` if it is a plain id (letters, digits, `._:-`, at most 128), else a fresh one; the
    same for the whole request (kept in its scope), so that an error names the id the request log would have."""
    state = scope.setdefault("state", {})
    if "request_id" not in state:
        sent = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        state["request_id"] = sent if REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
    return state["request_id"]


@contextmanager
def classifier_call(what: str = "the classifier") -> Iterator[None]:
    """503 + Retry-After when `what` is unavailable (`UNAVAILABLE`); any other error goes on, as the bug it is."""
    try:
        yield
    except UNAVAILABLE as error:
        raise ApiError(503, f"{what} is unavailable ({type(error).__name__}); retry shortly") from error


def in_error_shape(api: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A BentoML API whose `ApiError`s, and bugs, are answered as `ErrorBody` with their status (BentoML sends a
    returned response as it is, with the status its context holds). It must take `ctx: bentoml.Context`."""

    @functools.wraps(api)
    async def answered(*args: Any, ctx: Any, **kwargs: Any) -> Any:
        try:
            return await api(*args, ctx=ctx, **kwargs)
        except ApiError as error:
            response = error.response()
        except Exception as error:
            response = bug_response(error, ctx.request.scope)
        ctx.response.status_code = response.status_code
        return response

    return answered


def bug_response(error: Exception, scope: Scope) -> JSONResponse:
    """A bug's answer, quoting the request id it is logged under (once, with its traceback)."""
    reference = request_id(scope)
    log.error("internal error on %s %s (request %s)", scope["method"], scope["path"], reference, exc_info=error)
    message = f"internal error ({type(error).__name__}); quote request id {reference}"
    return error_response(500, message)


def documented(spec: dict, guarded: list[str], read_by_get: str) -> dict:
    """BentoML's OpenAPI document with the answers these APIs really give: every error status in `ErrorBody`'s
    shape, for the `guarded` routes (API keys on) the bearer scheme and its 401, and the GET of `read_by_get`."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorBody, ErrorDetail):
        schemas[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas[model.__name__].pop("$defs", None)
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for route, item in spec["paths"].items():
        if "post" not in item or "x-bentoml-name" not in item["post"]:
            continue
        statuses = ERROR_RESPONSES | (UNAUTHORIZED if route in guarded else {})
        answered = item["post"]["responses"]
        item["post"]["responses"] = {"200": answered.get(200, answered.get("200"))} | {
            str(status): {"description": description, "content": error} for status, description in statuses.items()
        }
        if route in guarded:
            item["post"]["security"] = [{"bearer": []}]
        item["post"]["requestBody"]["required"] = bool(
            item["post"]["requestBody"]["content"]["application/json"]["schema"].get("required")
        )
    read = spec["paths"][read_by_get]["post"]  # also read with GET (probes, browsers)
    spec["paths"][read_by_get]["get"] = {key: value for key, value in read.items() if key != "requestBody"} | {
        "operationId": f"{read['operationId']}_get"
    }
    if guarded:
        schemes = spec["components"].setdefault("securitySchemes", {})
        schemes["bearer"] = {"type": "http", "scheme": "bearer", "description": "An API key (`API_KEYS`)"}
    return spec


class Faults:
    """A bug below the APIs (the front door, the web UI) becomes a 500 in the `ErrorBody` shape, logged once with its
    traceback and the request's id. Plain ASGI, as the front door: no extra task or stream per request."""

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
            response = bug_response(error, scope)
            response.headers["x-request-id"] = request_id(scope)  # the front door, which adds it, is below
            await response(scope, receive, send)
