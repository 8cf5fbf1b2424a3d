"""The try-it page in headless Chromium: type a text, see the route with every score, and the answer.

Needs Debian's `chromium` and `chromium-driver` (CI installs them); skipped where they are missing.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver")


@pytest.fixture(scope="module")
def server_url(trained_project: Path) -> Iterator[str]:
    import uvicorn

    from mtlora import Engine
    from mtlora.server import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(lambda: Engine.from_config(trained_project, precision="fp32"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started and time.time() < deadline:
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def test_page_shows_route_scores_and_answer(server_url: str) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        browser.get(server_url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: len(Select(b.find_element(By.ID, "router")).options) > 1)
        Select(browser.find_element(By.ID, "router")).select_by_value("keywords")
        browser.find_element(By.ID, "text").send_keys("where is my refund")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(ready.presence_of_element_located((By.ID, "result")))
        assert browser.find_element(By.ID, "chosen-task").text == "support"
        scores = browser.find_elements(By.CSS_SELECTOR, "#route table tr td:first-child")
        assert {cell.text for cell in scores} >= {"support"}
        assert '"label"' in browser.find_element(By.ID, "result").text
        browser.find_element(By.ID, "text").clear()
        browser.find_element(By.ID, "text").send_keys("   ")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#answer .error")))
    finally:
        browser.quit()
