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


def test_blank_input_gets_the_apis_reason(page, tmp_path):
    """The page accepts what the API accepts: a blank review or a blank row is refused and says so."""
    page.reload(wait_until="networkidle")  # an empty page: no earlier upload in the file box
    submit_review(page, "   ")
    expect(page.get_by_text("the review: is blank")).to_be_visible(timeout=60_000)
    upload = tmp_path / "blank-row.csv"
    pd.DataFrame({"text": ["Fine.", None]}).to_csv(upload, index=False)
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
