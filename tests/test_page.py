"""The web page of `fewtune serve` in Debian's chromium: classes loaded from a saved model, results
that follow the classes, aligned Delete buttons, and what an unknown looks like."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import make_image
from test_browser import ARTIFACTS, free_port

import fewtune
from fewtune.app.demo import demo_photos


@pytest.fixture
def serve(tmp_path):
    """Start `fewtune serve [MODEL]` on a free loopback port; returns its URL."""
    processes = []

    def start(*args: str) -> str:
        port = free_port()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fewtune",
                "serve",
                *args,
                "--port",
                str(port),
                "--models-dir",
                str(tmp_path / "models"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=1)
                return url
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    pytest.fail(f"fewtune serve did not start: {process.stdout.read()}")
                time.sleep(0.3)

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


UNKNOWN = {
    "path": "x.png",
    "label": "unknown",
    "score": 0.31,
    "is_unknown": True,
    "novelty": 0.72,
    "top_k": [{"label": "a-much-longer-class-name", "score": 0.99}],
    "probabilities": {},
}


def stub_predict(browser, answer: dict) -> None:
    """Answer POST /predict with ``answer`` in the page itself: an unknown on demand."""
    browser.execute_script(
        """const answer = arguments[0], real = window.fetch;
        window.fetch = (url, options) => String(url).startsWith("/predict")
          ? Promise.resolve(new Response(JSON.stringify([answer]),
                                         {status: 200, headers: {"Content-Type": "application/json"}}))
          : real(url, options);""",
        answer,
    )


def test_a_saved_model_shows_its_classes_with_initials_and_aligned_delete_buttons(
    serve, browser, tiny_weights, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    data = tmp_path / "data"
    for c, (name, rgb) in enumerate(
        {"a": (220, 30, 30), "a-much-longer-class-name": (30, 200, 40), "Été": (30, 40, 220)}.items()
    ):
        for i in range(2):
            make_image(data / name / f"{i}.png", rgb, noise_seed=10 * c + i)
    model = fewtune.train(
        data, "prototype", backbone=fewtune.create_backbone("test_efficientnet", weights=tiny_weights)
    )
    url = serve(str(model.save(tmp_path / "m.fewtune")))
    wait = WebDriverWait(browser, 60)
    browser.get(url)
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#classes .class")) == 3)

    rows = browser.find_elements(By.CSS_SELECTOR, "#classes .class")
    assert [r.find_element(By.CSS_SELECTOR, ".initial").text for r in rows] == ["A", "A", "É"]
    assert not browser.find_elements(
        By.CSS_SELECTOR, "#classes .class img"
    )  # no picture that is not the class's own
    lefts = {r.find_element(By.TAG_NAME, "button").location["x"] for r in rows}
    assert len(lefts) == 1, f"Delete buttons at x = {lefts}"

    stub_predict(browser, UNKNOWN)
    browser.find_element(By.ID, "test-files").send_keys(str(data / "a" / "0.png"))
    label = wait.until(seen.visibility_of_element_located((By.CSS_SELECTOR, "#results .result .label")))
    assert label.text == "unknown · nearest: a-much-longer-class-name"  # no `nearest`: top_k[0]
    fills = browser.find_elements(By.CSS_SELECTOR, "#results .result .bar > div")
    assert [f.get_attribute("style") for f in fills] == ["width: 31%;"]  # one bar, of the score: never full

    stub_predict(browser, {**UNKNOWN, "nearest": "Été", "score": 0.12})
    browser.find_element(By.ID, "test-files").send_keys(str(data / "a" / "1.png"))
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .result")) == 2)
    first = browser.find_element(By.CSS_SELECTOR, "#results .result")
    assert first.find_element(By.CSS_SELECTOR, ".label").text == "unknown · nearest: Été"
    assert first.find_element(By.CSS_SELECTOR, ".bar > div").get_attribute("style") == "width: 12%;"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "serve-page-loaded-model.png"))


def test_results_are_classified_again_when_a_class_is_added(serve, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 90)
    browser.get(serve())

    def teach(name: str) -> None:
        browser.find_element(By.ID, "new-label").clear()
        browser.find_element(By.ID, "new-label").send_keys(name)
        browser.find_element(By.ID, "new-files").send_keys(str(sorted((demo_photos() / name).iterdir())[0]))
        browser.find_element(By.ID, "add-button").click()
        wait.until(
            seen.presence_of_element_located((By.CSS_SELECTOR, f'#classes .class[data-label="{name}"]'))
        )

    teach("strawberry")
    teach("scissors")
    sunflower = sorted((demo_photos() / "sunflower").iterdir())[5]
    browser.find_element(By.ID, "test-files").send_keys(str(sunflower))
    label = wait.until(seen.visibility_of_element_located((By.CSS_SELECTOR, "#results .result .label")))
    assert "sunflower" not in label.text  # it cannot know yet

    teach("sunflower")
    wait.until(seen.text_to_be_present_in_element((By.ID, "status"), "classified again"))
    results = browser.find_elements(By.CSS_SELECTOR, "#results .result .label")
    assert [r.text for r in results] == ["sunflower"]  # the same photo, answered again: not a second row
    rows = browser.find_elements(By.CSS_SELECTOR, "#classes .class")
    assert len({r.find_element(By.TAG_NAME, "button").location["x"] for r in rows}) == 1
    assert all(r.find_elements(By.TAG_NAME, "img") for r in rows)  # taught here: their own photos
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "serve-page-refreshed.png"))
