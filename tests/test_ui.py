"""The web UI as a person uses it: Debian's chromium, driven by Playwright, against the real service at /ui."""

import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import requests
from playwright.sync_api import expect, sync_playwright

from tests.conftest import SERVER_LOG

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = Path(os.environ.get("UI_SCREENSHOTS", ROOT / "build" / "ui"))  # `make screenshots`: reports/ui
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def offsite() -> list[str]:
    """Every request the page makes outside the service: the UI must work offline."""
    return []


@pytest.fixture(scope="module")
def page(server, offsite):
    chromium = shutil.which("chromium")
    assert chromium, "chromium not found: `make install` installs Debian's chromium (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        page.on("request", lambda r: None if r.url.startswith((server, "data:", "blob:")) else offsite.append(r.url))
        # Gradio mounts its components after its scripts and config arrive: a review typed before that is lost
        page.goto(f"{server}/ui/", wait_until="networkidle")
        yield page
        browser.close()


def submit_review(page, text: str) -> None:
    review = page.locator("#review textarea")
    review.fill(text)
    expect(review).to_have_value(text)
    page.locator("#submit").click()


def test_a_review_gets_its_label_and_highlighted_words(server, page, offsite):
    submit_review(page, "The acting was awful and the plot was boring. A waste of two hours.")
    expect(page.locator("#prediction")).to_contain_text("neg", timeout=60_000)
    words = page.locator("#words")
    expect(words).to_contain_text("awful", timeout=60_000)
    expect(page.locator("#method")).to_contain_text("SHAP")
    assert re.search(r'^sentiment_request_texts_count\{endpoint="/ui/review"[^}]*\} [1-9]', metrics(server), re.M)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "review.png", full_page=True)
    assert offsite == []


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_a_file_of_reviews_comes_back_with_predictions(server, page, offsite, tmp_path, suffix):
    reviews = pd.DataFrame({"text": ["A wonderful, moving film.", "Dreadful. I walked out."], "id": [7, 8]})
    upload = tmp_path / f"reviews.{suffix}"
    getattr(reviews, f"to_{suffix}")(upload, index=False)  # Parquet written by pyarrow, read by fastparquet
    page.reload(wait_until="networkidle")  # an empty file box: no earlier upload
    page.get_by_role("tab", name="Batch file").click()
    page.locator("input[type=file]").first.set_input_files(upload)
    page.locator("#predict-file").click()
    link = page.get_by_role("row", name=re.compile("reviews-predictions.csv")).get_by_role("link")
    expect(link).to_be_visible(timeout=60_000)
    with page.expect_download() as download:
        link.click()
    predictions = pd.read_csv(download.value.path())
    assert predictions.id.tolist() == [7, 8] and predictions.label.tolist() == ["pos", "neg"]
    # the same front door as /predict_batch: logged and metered under its own endpoint
    logged = [json.loads(line) for line in SERVER_LOG.read_text().splitlines()]
    assert any(line["endpoint"] == "/ui/batch" and line["batch_size"] == 2 for line in logged)
    assert re.search(r'^sentiment_request_texts_count\{endpoint="/ui/batch"[^}]*\} [1-9]', metrics(server), re.M)
    page.screenshot(path=SCREENSHOTS / f"batch-{suffix}.png", full_page=True)
    assert offsite == []


def test_a_large_upload_leaves_the_api_answering(server, page, tmp_path):
    """A file of many short confident reviews (the lexical model answers each in the API process): `/predict` keeps
    answering while it goes through, and the download has every row. A file over the row cap is refused, saying so."""
    import threading
    import time

    from serving.settings import SETTINGS

    rows = min(SETTINGS.ui_max_rows, 6000)
    texts = ["Wonderful, brilliant, a masterpiece!", "Awful, boring, the worst film ever."] * (rows // 2)
    upload = tmp_path / "many.csv"
    pd.DataFrame({"text": texts}).to_csv(upload, index=False)
    page.reload(wait_until="networkidle")
    page.get_by_role("tab", name="Batch file").click()
    page.locator("input[type=file]").first.set_input_files(upload)
    done, answered = threading.Event(), []

    def ask() -> None:  # one client, one request at a time, for as long as the upload runs
        while not done.is_set():
            started = time.perf_counter()
            assert requests.post(f"{server}/predict", json={"text": "A fine film."}, timeout=30).status_code == 200
            answered.append((time.perf_counter(), time.perf_counter() - started))

    page.locator("#predict-file").click()
    asker, clicked = threading.Thread(target=ask), time.perf_counter()
    asker.start()
    link = page.get_by_role("row", name=re.compile("many-predictions.csv")).get_by_role("link")
    expect(link).to_be_visible(timeout=300_000)
    finished = time.perf_counter()
    done.set()
    asker.join()
    during = [seconds for at, seconds in answered if at < finished]
    assert len(during) >= 5 and max(during) < (finished - clicked) / 2, (len(during), finished - clicked)
    with page.expect_download() as download:
        link.click()
    assert len(pd.read_csv(download.value.path())) == rows
    over = tmp_path / "too-many.csv"
    pd.DataFrame({"text": ["Fine."] * (SETTINGS.ui_max_rows + 1)}).to_csv(over, index=False)
    page.reload(wait_until="networkidle")
    page.get_by_role("tab", name="Batch file").click()
    page.locator("input[type=file]").first.set_input_files(over)
    page.locator("#predict-file").click()
    expect(page.get_by_text(f"the web UI takes {SETTINGS.ui_max_rows}")).to_be_visible(timeout=60_000)


def test_blank_input_gets_the_apis_reason(page, tmp_path):
    """The page accepts what the API accepts: a blank review (spaces, or invisible characters only) or a blank row is
    refused and says so."""
    page.reload(wait_until="networkidle")  # an empty page: no earlier upload in the file box
    submit_review(page, "   ")
    expect(page.get_by_text("the review: is blank")).to_be_visible(timeout=60_000)
    page.reload(wait_until="networkidle")
    submit_review(page, "\u200b\u00a0\u2060")
    expect(page.get_by_text("the review: is blank")).to_be_visible(timeout=60_000)
    upload = tmp_path / "blank-row.csv"
    pd.DataFrame({"text": ["Fine.", "\u200b\u200b"]}).to_csv(upload, index=False)
    page.get_by_role("tab", name="Batch file").click()
    page.locator("input[type=file]").first.set_input_files(upload)
    page.locator("#predict-file").click()
    expect(page.get_by_text("row 2: is blank")).to_be_visible(timeout=60_000)


def test_uploads_are_bounded_in_size(server):
    """Gradio refuses an upload over the UI's limit before storing it (each one is memory in the container)."""
    big = {"files": ("reviews.csv", b"text\n" + b"x" * (11 * 2**20), "text/csv")}
    assert requests.post(f"{server}/ui/gradio_api/upload", files=big, timeout=60).status_code == 413
    small = {"files": ("reviews.csv", b"text\ngreat film\n", "text/csv")}
    assert requests.post(f"{server}/ui/gradio_api/upload", files=small, timeout=60).status_code == 200


def metrics(server: str) -> str:
    return requests.get(f"{server}/metrics", timeout=10).text


def test_idle_ui_streams_lock_out_no_one(server):
    """520 idle heartbeat streams of the web UI (what as many open tabs hold) from one address: that client gets its
    share of the UI's budget and a 429 past it, at once; `/predict` and `/health` keep their usual latency."""
    import socket
    import statistics
    import time

    def latency_ms(path: str) -> float:
        started = time.perf_counter()
        answer = requests.post(
            f"{server}{path}", json={"text": "A fine film."} if path == "/predict" else {}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        return 1000 * (time.perf_counter() - started)

    usual = {path: statistics.median(latency_ms(path) for _ in range(20)) for path in ("/predict", "/health")}
    host, port = server.removeprefix("http://").split(":")
    streams = []
    for n in range(520):
        connection = socket.create_connection((host, int(port)))
        connection.sendall(f"GET /ui/gradio_api/heartbeat/tab{n} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        streams.append(connection)
    try:
        statuses = []
        for connection in streams:
            connection.settimeout(10)
            statuses.append(connection.recv(64).split(b" ")[1].decode())
        health = requests.get(f"{server}/health", timeout=10).json()["admission"]["ui_connections"]
        assert statuses.count("200") == health["per_client"] == health["open"]
        assert statuses.count("429") == 520 - health["per_client"]
        while_held = {path: statistics.median(latency_ms(path) for _ in range(20)) for path in usual}
    finally:
        for connection in streams:
            connection.close()
    for path, median_ms in while_held.items():
        assert median_ms <= 2 * usual[path] + 20, (path, usual[path], median_ms)
