"""An ASGI app mounted at start and built afterwards, in the background.

The web UI is a Gradio app, and importing Gradio alone takes seconds: the API would be ready that much later if it
were built before the worker starts. Mounted as a `DeferredApp`, /ui answers 503 with Retry-After (the API's
error shape) until it is built, and `state` says where it stands (in /health).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from fastapi import FastAPI

from serving.errors import error_response

log = logging.getLogger(__name__)


class DeferredApp:
    def __init__(self, name: str) -> None:
        self.name, self.app, self.error = name, None, None
        self.lifespan = contextlib.AsyncExitStack()

    async def build(self, factory: Callable[[], FastAPI]) -> None:
        """`factory` in a thread, then its lifespan (startup events) entered here, on the server's event loop."""
        try:
            app = await asyncio.to_thread(factory)
            await self.lifespan.enter_async_context(app.router.lifespan_context(app))
            self.app = app
        except Exception as error:
            log.exception("%s could not be built", self.name)
            self.error = error

    async def close(self) -> None:
        await self.lifespan.aclose()

    def state(self) -> str:
        """`ready`, `starting`, or `unavailable (...)` when building it failed."""
        if self.app is not None:
            return "ready"
        return "starting" if self.error is None else f"unavailable ({self.error!r})"

    async def __call__(self, scope, receive, send) -> None:
        if self.app is None:
            if scope["type"] != "http":
                return  # a websocket before the app exists: the server refuses it
            response = error_response(503, f"{self.name} is {self.state()}; retry shortly")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
