"""The page at ``/`` in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by Selenium against ``feather-serve`` on 127.0.0.1. It uploads the
sample image, asks, and checks that the streamed answer equals the API's and that the kept
tokens of each stage are drawn. ``FEATHER_WEB_SCREENSHOT=docs/web-page.png`` saves the page."""

from __future__ import annotations

import os
import shutil

import httpx
import pytest

from tests.serve.conftest import PROMPT, chat_body, data_uri

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if (CHROMIUM is None or CHROMEDRIVER is None) and os.environ.get("FEATHER_REQUIRE_BROWSER"):
    raise RuntimeError("FEATHER_REQUIRE_BROWSER is set (CI) but chromium or chromedriver is missing "
                       "(apt-get install -y chromium chromium-driver)")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="needs headless Chromium: apt-get install -y chromium chromium-driver "
                                       "(CI installs it and sets FEATHER_REQUIRE_BROWSER=1, so it cannot skip there)")
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_streams_the_answer_and_draws_the_kept_tokens(server, browser, image_png, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    api = httpx.post(f"{server.url}/v1/chat/completions",
                     json=chat_body(data_uri(image_png), prompt=PROMPT, max_tokens=MAX_TOKENS), timeout=60).json()
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(ec.text_to_be_present_in_element((By.ID, "model"), "feather"))
    browser.find_element(By.ID, "file").send_keys(str(image_png))
    wait.until(ec.element_to_be_clickable((By.ID, "ask")))
    question = browser.find_element(By.ID, "question")
    question.clear()
    question.send_keys(PROMPT)
    tokens = browser.find_element(By.ID, "max-tokens")
    tokens.clear()
    tokens.send_keys(str(MAX_TOKENS))
    browser.find_element(By.ID, "ask").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "done"))

    assert browser.find_element(By.ID, "answer").get_attribute("textContent") == api["choices"][0]["message"]["content"]
    assert browser.find_element(By.ID, "status").text == f"done ({api['choices'][0]['finish_reason']})"
    stages = api["feather"]["stages"]
    figures = browser.find_elements(By.CSS_SELECTOR, "#stages figure")
    assert [int(f.get_attribute("data-kept")) for f in figures] == [api["feather"]["n_image"]] + [
        len(s["kept"]) for s in stages]
    canvases = browser.find_elements(By.CSS_SELECTOR, "#stages canvas")
    assert [int(c.get_attribute("data-kept")) for c in canvases] == [len(s["kept"]) for s in stages]
    # the overlay dims exactly the pruned cells: count the dark 8 x 8 cells in the last stage's canvas
    dimmed = browser.execute_script(
        "const c = arguments[0], g = c.width / 8, d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 0; i < g * g; i++) {"
        "  const x = (i % g) * 8 + 4, y = Math.floor(i / g) * 8 + 4; if (d[(y * c.width + x) * 4 + 3] > 0) n++; }"
        "return n;", canvases[-1])
    assert dimmed == api["feather"]["n_image"] - len(stages[-1]["kept"])
    info = browser.find_element(By.ID, "info").text
    assert api["feather"]["operating_point"]["criterion"] in info and "time to first token" in info
    shot = os.environ.get("FEATHER_WEB_SCREENSHOT") or str(tmp_path / "web-page.png")
    assert browser.save_screenshot(shot)


def test_page_shows_a_server_error_on_one_line(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"this is not a picture")
    browser.get(server.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    wait = WebDriverWait(browser, 30)
    wait.until(ec.element_to_be_clickable((By.ID, "ask"))).click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "error"))
    answer = browser.find_element(By.ID, "answer").text
    assert answer == "400: image bytes: cannot read image (not an image format Pillow can read)", answer
