"""What /ui answers before the web UI, built after start (serving/deferred.py), exists; and once it does."""

import asyncio

from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving.deferred import DeferredApp


def test_the_ui_answers_503_until_it_is_built_after_start():
    ui = DeferredApp("the web UI")
    host = FastAPI()
    host.mount("/ui", ui)
    client = TestClient(host)
    before = client.get("/ui/")
    assert before.status_code == 503 and before.headers["retry-after"] == "1"
    assert before.json() == {"error": "the web UI is starting; retry shortly", "detail": None}
    built = FastAPI()
    built.get("/")(lambda: {"page": "ui"})
    asyncio.run(ui.build(lambda: built))
    assert ui.state() == "ready" and client.get("/ui/").json() == {"page": "ui"}
    broken = DeferredApp("the web UI")
    asyncio.run(broken.build(lambda: 1 / 0))
    assert broken.state().startswith("unavailable (ZeroDivisionError")
    assert TestClient(broken).get("/").status_code == 503
