"""The playground page in a real browser: Debian's headless Chromium, driven by Selenium,
loads the page, fills in the embedded sample, runs it, and shows the API's kept spans."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ctxcomp.service.server import BackgroundServer, ServerConfig

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SAMPLE = json.loads((Path(__file__).parents[2] / "ctxcomp" / "samples" / "rag_request.json").read_text())
ARTIFACTS = Path(os.environ.get("CTXCOMP_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run installs them)",
)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1800"):
        options.add_argument(flag)  # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def api_spans(port: int) -> dict[str, list[tuple[int, int]]]:
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/compress", data=json.dumps({**SAMPLE, "rate": 0.33}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        body = json.loads(response.read())
    return {d["id"]: [(int(s["start"]), int(s["end"])) for s in d["kept_spans"]] for d in body["documents"]}


def test_the_sample_run_in_the_page_highlights_the_spans_the_api_returns(compressor, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    with BackgroundServer(compressor, ServerConfig(port=0, http_port=0, playground=True)) as running:
        port = running.server.http_port
        browser.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#method option")) > 1)
        browser.find_element(By.ID, "sample").click()
        assert browser.find_element(By.ID, "query").get_attribute("value") == SAMPLE["query"]
        rate = browser.find_element(By.ID, "rate")
        rate.clear()
        rate.send_keys("0.33")
        browser.find_element(By.ID, "run").click()
        WebDriverWait(browser, 60).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#results .doc")))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "playground.png"))

        expected = api_spans(port)
        texts = {d["id"]: d["text"] for d in SAMPLE["documents"]}
        cards = browser.find_elements(By.CSS_SELECTOR, "#results .doc")
        assert [c.get_attribute("data-id") for c in cards] == [d["id"] for d in SAMPLE["documents"]]
        for card in cards:
            doc_id = card.get_attribute("data-id")
            marks = card.find_elements(By.CSS_SELECTOR, "mark.kept")
            shown = [(int(m.get_attribute("data-start")), int(m.get_attribute("data-end"))) for m in marks]
            assert shown == expected[doc_id]
            assert [m.text for m in marks] == [texts[doc_id][a:b].strip() for a, b in shown]
        assert "stockholm-weather" in {d for d, spans in expected.items() if not spans}  # something is greyed out
        summary = browser.find_element(By.ID, "summary").text
        assert "cascade" in summary and "x shorter" in summary
        assert "top-heavy" in browser.find_element(By.ID, "context").get_attribute("value")
