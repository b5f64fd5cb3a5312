"""The door of the API: a request counts as inside only once its whole body has arrived, and is refused there,
before its body is parsed, when the worker is behind (`admission.Door`).

BentoML's own limit (`traffic.max_concurrency`) counts a request from its first header line, so a client that opens
many requests and sends no body holds every slot: everyone else gets 429 for as long as it likes. Here a body must
arrive within `body_timeout_s` (else 408, and the connection is closed) and within `max_body_bytes` (else 413, before
it is read when its length is declared); then the door answers a fast 503 + Retry-After if the worker is behind (too
many requests inside, or its event loop late). Plain ASGI, as `errors.Faults`.
"""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.admission import Door
from serving.errors import error_response


class Intake:
    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout_s: float, door: Door):
        self.app, self.max_body_bytes, self.body_timeout_s, self.door = app, max_body_bytes, body_timeout_s, door

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = Headers(scope=scope).get("content-length")
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
        if scope["method"] != "POST":  # reads (health, metrics, the UI's streams) are cheap: never counted
            return await self.app(scope, replay(body, receive), send)
        if refusal := self.door.refusal():
            return await self._refuse(503, f"{refusal}; retry shortly", scope, receive, send)
        self.door.inside += 1
        try:
            await self.app(scope, replay(body, receive), send)
        finally:
            self.door.inside -= 1

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

    @staticmethod
    async def _refuse(status: int, error: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Answered before the body was read: the connection is closed after it (the rest may still be coming)."""
        headers = {"Connection": "close"} if status in (408, 413) else {}
        await error_response(status, error, headers=headers)(scope, receive, send)


def replay(messages: list[Message], receive: Receive) -> Receive:
    """`receive` for the app: the messages already read, then the connection's own (a disconnect)."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
