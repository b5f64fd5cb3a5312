"""The front door of the API worker: what a request must be before a BentoML API runs it, answered in the API's error
shape, in the order it costs (`Intake`, added with BentoML's `add_asgi_middleware`).

1. Its whole body arrives within `body_timeout_s` (else 408, and the connection is closed) and within
   `max_body_bytes` (else 413, before it is read when its length is declared). BentoML's own limit
   (`traffic.max_concurrency`) counts a request from its first header line, so a client that opens many requests
   and sends no body would hold every slot.
2. It is JSON (415), with a valid API key when keys are on (401), and the worker is not behind: too many requests
   inside, or its event loop late (`admission.Door`: a fast 503 + Retry-After, before the body is parsed).
3. Its body fits the API's schema (400 for malformed JSON, 422 with one detail per field), which BentoML would
   answer as 400 in a shape of its own.

Beside: every answer carries the request's `x-request-id`; `GET /health` is the `health` API (probes and browsers
read it; BentoML's APIs are POST); `/docs.json` is BentoML's OpenAPI document with these answers declared; the web
UI's connections count against their own budget, per client address (`admission.Streams`: 429 past a client's share,
503 when full), never against the API's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import bentoml
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.access import ApiKeys
from serving.admission import Door, Streams
from serving.errors import documented, error_response, request_id

OPEN_ROUTES = ("/health",)  # APIs with no key and no slot: they read state, they run no model
READ_BY_GET = "/health"
UI_PREFIX = "/ui"
SYSTEM_ROUTES = ("/", "/livez", "/healthz", "/readyz", "/metrics", "/docs.json", "/schema.json")  # BentoML's
MOUNTS = (UI_PREFIX, "/static_content", "/assets")  # the web UI, and the static files of BentoML's pages
UNKNOWN = "unknown"


def route_of(api_routes: frozenset[str], path: str) -> str:
    """The route a path belongs to (its metric label): itself for an API or system route, a mount's prefix for the
    paths under it, `unknown` for anything else (answered 404): a bounded set, whatever clients send."""
    if path in api_routes or path in SYSTEM_ROUTES:
        return path
    return next((mount for mount in MOUNTS if path == mount or path.startswith(f"{mount}/")), UNKNOWN)


class Intake:
    def __init__(
        self,
        app: ASGIApp,
        service: Any,
        max_body_bytes: int,
        body_timeout_s: float,
        door: Door,
        streams: Streams,
        client_address_header: str,
        keys: ApiKeys,
        metrics_need_key: bool,
        info: dict[str, str],
    ):
        self.app, self.service, self.max_body_bytes, self.body_timeout_s = app, service, max_body_bytes, body_timeout_s
        self.door, self.streams, self.keys, self.info = door, streams, keys, info
        self.client_address_header = client_address_header.lower().encode()
        self.inputs = {api.route: api.input_spec for api in service.apis.values()}
        self.routes = frozenset(self.inputs)
        self.metrics_need_key = metrics_need_key and keys.enabled
        self.guarded = [route for route in self.inputs if keys.enabled and route not in OPEN_ROUTES]
        self.openapi: dict | None = None
        self.answers = bentoml.metrics.Counter(
            name="sentiment_door_answers",
            documentation="Answers the front door gave itself (refusals, 404s, the OpenAPI document), by route",
            labelnames=["route", "status"],
        )
        for route in self.routes:  # the refusals' series exist from the start, at zero: a rate over them is defined
            self.answers.labels(route=route, status="503")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = with_request_id(send, request_id(scope))
        path, method = scope["path"], scope["method"]
        if path == "/docs.json" and method == "GET":
            return await self.answer(JSONResponse(self.documented()), scope, receive, send)
        route = route_of(self.routes, path)
        if route == UI_PREFIX:
            return await self.stream(scope, receive, send)
        if route == UNKNOWN:
            refused = error_response(404, f"no route {path[:100]!r}: see /docs.json")
            return await self.answer(refused, scope, receive, send)
        if (
            route == "/metrics"
            and self.metrics_need_key
            and not self.keys.admits(Headers(scope=scope).get("authorization"))
        ):
            refused = error_response(401, "/metrics wants an API key: Authorization: Bearer <key>")
            return await self.answer(refused, scope, receive, send)
        if path not in self.inputs:
            return await self.app(scope, receive, send)  # probes, metrics, the OpenAPI pages: BentoML's own
        if method == "GET" and path == READ_BY_GET:
            scope = as_json(dict(scope, method="POST"))
            return await self.app(scope, replay([{"type": "http.request", "body": b"{}"}], receive), send)
        if method != "POST":
            allowed = "GET, POST" if path == READ_BY_GET else "POST"
            refused = error_response(405, f"{path} takes {allowed}", headers={"Allow": allowed})
            return await self.answer(refused, scope, receive, send)
        await self.admit(scope, receive, send)

    async def admit(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers, path = Headers(scope=scope), scope["path"]
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_body_bytes:
            return await self._refuse(413, f"Request body over {self.max_body_bytes} bytes", scope, receive, send)
        try:
            async with asyncio.timeout(self.body_timeout_s):  # no extra task per request, unlike wait_for
                body = await self._body(receive)
        except TimeoutError:
            message = f"the request body did not arrive within {self.body_timeout_s:g} s"
            return await self._refuse(408, message, scope, receive, send)
        if body is None:
            return await self._refuse(413, f"Request body over {self.max_body_bytes} bytes", scope, receive, send)
        if not any(m.get("body") for m in body):  # no body: an empty object (`/health` needs nothing more)
            scope, body = as_json(scope), [{"type": "http.request", "body": b"{}"}]
            headers = Headers(scope=scope)
        if refusal := self._refusal(headers, path):
            return await self.answer(error_response(*refusal), scope, receive, send)
        counted = path not in OPEN_ROUTES
        if counted and (behind := self.door.refusal()):
            return await self.answer(error_response(503, f"{behind}; retry shortly"), scope, receive, send)
        if scope.get("query_string"):  # nothing is read from it: a client's `?mode=` would be silently ignored
            detail = [{"loc": ["query"], "msg": "the APIs take no query parameters", "type": "extra_forbidden"}]
            refused = error_response(422, "send `mode` and every other field in the JSON body", detail)
            return await self.answer(refused, scope, receive, send)
        if invalid := self._invalid(path, b"".join(m.get("body", b"") for m in body)):
            return await self.answer(invalid, scope, receive, send)
        self.door.inside += counted
        try:
            await self.app(scope, replay(body, receive), send)
        finally:
            self.door.inside -= counted

    async def stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A web UI connection, held against the UI's budget and its client's share for as long as it lasts."""
        client = self.client_address(scope)
        if refusal := self.streams.refusal(client):
            return await self.answer(error_response(*refusal), scope, receive, send)
        with self.streams.held(client):
            await self.app(scope, receive, send)

    def client_address(self, scope: Scope) -> str:
        """The client's address: the first one in `client_address_header` when set (behind a proxy), else the
        socket's."""
        if self.client_address_header:
            forwarded = dict(scope["headers"]).get(self.client_address_header, b"").decode("latin-1")
            if first := forwarded.split(",")[0].strip():
                return first[:64]  # bounded: the key of a map
        return scope["client"][0] if scope.get("client") else "unknown"

    def _refusal(self, headers: Headers, path: str) -> tuple[int, str] | None:
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            return 415, f"Content-Type must be application/json, not {media_type or 'missing'!r}"
        if path in self.guarded and not self.keys.admits(headers.get("authorization")):
            return 401, "a valid API key is required: send the header Authorization: Bearer <key>"
        return None

    def _invalid(self, path: str, body: bytes) -> JSONResponse | None:
        """400 or 422 in the error shape when `body` breaks the API's input schema; None when it fits."""
        try:
            self.inputs[path].model_validate_json(body)
        except ValidationError as error:
            errors = error.errors(include_url=False, include_context=False, include_input=False)
            if any(e["type"] == "json_invalid" for e in errors):
                return error_response(400, "The body is not valid JSON")
            detail = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in errors]
            return error_response(422, f"{len(detail)} validation error(s) in the request", detail)
        return None

    def documented(self) -> dict:
        if self.openapi is None:
            spec = self.service.openapi_spec.asdict()
            spec["info"] |= self.info
            self.openapi = documented(spec, self.guarded, READ_BY_GET)
        return self.openapi

    async def _body(self, receive: Receive) -> list[Message] | None:
        """The request's messages up to the end of its body; None once it passes `max_body_bytes` (chunked)."""
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                return None
            if message["type"] != "http.request" or not message.get("more_body"):
                return messages

    async def _refuse(self, status: int, error: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Answered before the body was read: the connection is closed after it (the rest may still be coming)."""
        await self.answer(error_response(status, error, headers={"Connection": "close"}), scope, receive, send)

    async def answer(self, response: Response, scope: Scope, receive: Receive, send: Send) -> None:
        """One of the door's own answers, counted by route and status: BentoML's request metrics, inside the door
        (`serving/compat.py`), never see it."""
        self.answers.labels(route=route_of(self.routes, scope["path"]), status=str(response.status_code)).inc()
        await response(scope, receive, send)


def as_json(scope: Scope) -> Scope:
    """`scope` with a JSON content type, for a request sent without a body."""
    headers = [(name, value) for name, value in scope["headers"] if name != b"content-type"]
    return dict(scope, headers=[*headers, (b"content-type", b"application/json")])


def with_request_id(send: Send, reference: str) -> Send:
    async def sent(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (b"x-request-id", reference.encode())]
        await send(message)

    return sent


def replay(messages: list[Message], receive: Receive) -> Receive:
    """`receive` for the app: the messages already read, then the connection's own (a disconnect)."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
