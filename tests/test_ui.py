"""The web UI as a person uses it: Debian's chromium, driven by Playwright, against the real service at /ui."""

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "reports" / "ui"
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def page(explainer_ready):
    server = explainer_ready
    chromium = shutil.which("chromium")
    assert chromium, "chromium not found: `make install` installs Debian's chromium (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        page.elsewhere = []  # every request the page makes outside the service (it must work offline)
        page.on(
            "request",
            lambda r: page.elsewhere.append(r.url) if not r.url.startswith((server, "data:", "blob:")) else None,
        )
        page.goto(f"{server}/ui/")
        yield page
        browser.close()


def test_a_review_gets_its_label_and_highlighted_words(page):
    page.locator("#review textarea").fill("The acting was awful and the plot was boring. A waste of two hours.")
    page.locator("#submit").click()
    expect(page.locator("#prediction")).to_contain_text("neg", timeout=60_000)
    words = page.locator("#words")
    expect(words).to_contain_text("awful", timeout=60_000)
    expect(page.locator("#method")).to_contain_text("SHAP")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "review.png", full_page=True)
    assert page.elsewhere == []


def test_a_file_of_reviews_comes_back_with_predictions(page, tmp_path):
    reviews = pd.DataFrame({"text": ["A wonderful, moving film.", "Dreadful. I walked out."], "id": [7, 8]})
    upload = tmp_path / "reviews.csv"
    reviews.to_csv(upload, index=False)
    page.get_by_role("tab", name="Batch file").click()
    page.locator("input[type=file]").first.set_input_files(upload)
    page.locator("#predict-file").click()
    link = page.get_by_role("row", name=re.compile("reviews-predictions.csv")).get_by_role("link")
    expect(link).to_be_visible(timeout=60_000)
    with page.expect_download() as download:
        link.click()
    predictions = pd.read_csv(download.value.path())
    assert predictions.id.tolist() == [7, 8] and predictions.label.tolist() == ["pos", "neg"]
    page.screenshot(path=SCREENSHOTS / "batch.png", full_page=True)
    assert page.elsewhere == []
