"""One JSON error shape for every failure of the public API, declared in the OpenAPI document as it is sent."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

RETRY_AFTER_S = 1


class ErrorDetail(BaseModel):
    loc: list[str | int] = Field(description="Where in the request the problem is, e.g. ['body', 'texts', 3]")
    msg: str
    type: str


class ErrorBody(BaseModel):
    error: str = Field(description="What went wrong, in one sentence")
    detail: list[ErrorDetail] | None = Field(None, description="Validation errors, one per offending field")


class ApiError(Exception):
    """An error answered as `ErrorBody` with `status` (and Retry-After on 429/503)."""

    def __init__(self, status: int, error: str):
        self.status, self.error = status, error


def _described(description: str) -> dict:
    return {"model": ErrorBody, "description": description}


ERROR_RESPONSES: dict[int | str, dict] = {
    400: _described("Malformed JSON or undecodable bytes"),
    413: _described("Request body larger than the limit"),
    415: _described("Content-Type is not application/json"),
    422: _described("JSON that breaks the request schema (types, lengths, blank texts, batch size)"),
    503: _described("Overloaded or the model is not ready: retry after the Retry-After header's seconds"),
}


def error_response(
    status: int, error: str, detail: list[dict] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    headers = (headers or {}) | ({"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else {})
    body = ErrorBody(error=error, detail=[ErrorDetail(**d) for d in detail] if detail else None)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def require_json(request: Request) -> None:
    """415 for anything but a JSON body (multipart, form, text...), before the body is read."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, not {media_type or 'missing'!r}")


def install(app: FastAPI, max_body_bytes: int) -> None:
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

    app.add_middleware(BodyLimit, max_body_bytes=max_body_bytes)


class BodyLimit:
    """413 for a declared body over the limit, before it is read. Plain ASGI: `@app.middleware("http")` would wrap
    every request and response in extra tasks and streams (a measurable share of a lexical answer's time)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = Headers(scope=scope).get("content-length")
            if length and length.isdigit() and int(length) > self.max_body_bytes:
                response = error_response(413, f"Request body over {self.max_body_bytes} bytes")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)
