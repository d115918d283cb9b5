"""End to end in a real browser: Debian's chromium drives the page served by `fewtune serve`."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fewtune.app.demo import demo_photos

ARTIFACTS = Path(os.environ.get("FEWTUNE_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fewtune",
            "serve",
            "--port",
            str(port),
            "--models-dir",
            str(tmp_path / "models"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=1)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"fewtune serve did not start: {process.stdout.read()}")
            time.sleep(0.3)
    yield url
    process.terminate()
    process.wait(timeout=10)


def test_teach_two_classes_from_one_photo_each_and_classify_a_third(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(server)
    for name in ("strawberry", "scissors"):
        browser.find_element(By.ID, "new-label").clear()
        browser.find_element(By.ID, "new-label").send_keys(name)
        browser.find_element(By.ID, "new-files").send_keys(str(sorted((demo_photos() / name).iterdir())[0]))
        browser.find_element(By.ID, "add-button").click()
        wait.until(
            seen.presence_of_element_located((By.CSS_SELECTOR, f'#classes .class[data-label="{name}"]'))
        )

    unseen = sorted((demo_photos() / "scissors").iterdir())[5]
    browser.find_element(By.ID, "test-files").send_keys(str(unseen))
    label = wait.until(seen.visibility_of_element_located((By.CSS_SELECTOR, "#results .result .label")))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "serve-page.png"))
    assert label.text == "scissors", browser.find_element(By.ID, "status").text

    browser.find_element(By.ID, "save-button").click()
    wait.until(seen.text_to_be_present_in_element((By.ID, "status"), "Saved to"))
