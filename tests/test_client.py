"""BentoML's own clients against the real service: its sync and async HTTP clients call every API by name, and
another BentoML service depends on it (`bentoml.depends`) as a deployed URL."""

import asyncio
import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import bentoml
import pytest
import requests
from bentoml.exceptions import BentoMLException

from loadtests.common import running
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)
GOOD, BAD = "A moving, beautifully acted film: I loved every minute of it.", "Dull, predictable and far too long."


def test_the_sync_client_calls_every_api_by_name(server):
    with bentoml.SyncHTTPClient(server) as client:
        assert {"predict", "predict_batch", "explain", "health"} <= set(client.endpoints)
        assert client.predict(text=GOOD)["label"] == "pos"
        batch = client.predict_batch(texts=[GOOD, BAD], mode="transformer")
        assert [p["label"] for p in batch["predictions"]] == ["pos", "neg"]
        assert {p["path"] for p in batch["predictions"]} == {"transformer"}
        assert client.health()["status"] == "ok"
        assert client.explain(text=GOOD)["label"] == "pos"
        with pytest.raises(BentoMLException) as refused:
            client.predict(text=" ")
        assert refused.value.error_code == 422 and "validation error" in str(refused.value)


def test_the_async_client_calls_by_name_and_sees_the_errors(server):
    async def calls():
        async with bentoml.AsyncHTTPClient(server) as client:
            single, batch = await asyncio.gather(client.predict(text=BAD), client.predict_batch(texts=[BAD, GOOD]))
            with pytest.raises(BentoMLException) as refused:
                await client.predict_batch(texts=[])
            return single, batch, refused.value

    single, batch, refused = asyncio.run(calls())
    assert single["label"] == "neg" and [p["label"] for p in batch["predictions"]] == ["neg", "pos"]
    assert refused.error_code == 422


def test_another_bentoml_service_depends_on_it_by_url(server):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "bentoml", "serve", "tests.services:Caller", "--port", str(port)]
    with running(command, f"{url}/readyz", {"SENTIMENT_URL": server}):
        answer = requests.post(f"{url}/triage", json={"reviews": [GOOD, BAD, "Awful. Just awful."]}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json() == [BAD, "Awful. Just awful."]


def docs_examples(language: str) -> list[str]:
    """The code blocks of `language` in docs/API.md's Examples section, as a reader would paste them."""
    section = (ROOT / "docs" / "API.md").read_text().split("## Examples", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def test_the_docs_examples_run_as_written(server):
    host = server.removeprefix("http://")
    for command in "".join(docs_examples("bash")).splitlines():
        answer = subprocess.run(command.replace("localhost:3000", host), shell=True, capture_output=True, text=True)
        assert answer.returncode == 0 and json.loads(answer.stdout), command
    examples = docs_examples("python")
    assert len(examples) == 3
    for example in examples:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(example.replace("http://localhost:3000", server), {"__name__": "docs_example"})  # the docs' own
        assert "pos" in printed.getvalue() or "class ReviewTriage" in example, example
