"""Reports a person would rather look at than read: thumbnails of mistakes, a coloured confusion
matrix, readable learning curves, and per-strategy latency measured warm."""

from __future__ import annotations

import base64
import os
import re
import time
from pathlib import Path

import pytest
import torch
from conftest import make_image
from test_cli import run

import fewtune
from fewtune.evaluate.compare import Comparison, CurvePoint, _predict_ms
from fewtune.evaluate.compare_report import _code, write_report
from fewtune.evaluate.evaluation import evaluate, render_html, write_html

ARTIFACTS = Path(os.environ.get("FEWTUNE_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))


@pytest.fixture
def trained(tiny_backbone, colour_data):
    return fewtune.train(colour_data, "prototype", backbone=tiny_backbone)


@pytest.fixture
def test_with_mistakes(tmp_path):
    """2 red, 1 green, and two "green" pictures that are really red: two mistakes."""
    test = tmp_path / "test"
    make_image(test / "red" / "a.png", (220, 30, 30), noise_seed=101)
    make_image(test / "red" / "b.png", (220, 30, 30), noise_seed=102)
    make_image(test / "green" / "c.png", (30, 200, 40), noise_seed=103)
    make_image(test / "green" / "mislabelled <1>.png", (220, 30, 30), noise_seed=104, size=(400, 300))
    make_image(test / "green" / "mislabelled 2.png", (220, 30, 30), noise_seed=105)
    return test


def test_evaluate_report_shows_mistakes_as_small_inline_thumbnails(trained, test_with_mistakes):
    report = evaluate(trained, fewtune.load_dataset(test_with_mistakes))
    html = render_html(report, "colours")
    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', html)
    assert len(uris) == len(report.mistakes) == 2
    assert all(len(base64.b64decode(u)) < 8000 for u in uris)  # small, whatever the photo's size
    assert "mislabelled &lt;1&gt;.png" in html and "<1>" not in html  # file names escaped
    assert "Most confident mistakes" in html


def test_confusion_matrix_is_coloured_by_share_of_the_true_class(trained, test_with_mistakes):
    html = render_html(evaluate(trained, fewtune.load_dataset(test_with_mistakes)), "colours")
    cells = dict(re.findall(r'<td class="(right|wrong)" style="background:rgba\(([\d,.]+)\)', html))
    assert cells["right"].startswith("22,163,74") and cells["wrong"].startswith("220,38,38")
    # green row (columns blue, green, red): 1 right of 3, then 2 of 3 taken for red: the wrong cell is darker
    green = re.search(r"<tr><th>green</th>(.*?)</tr>", html).group(1)
    alphas = [float(a) for a in re.findall(r"rgba\([\d,]+,([\d.]+)\)", green)]
    assert alphas == [pytest.approx(0.12 + 0.88 / 3, abs=0.01), pytest.approx(0.12 + 0.88 * 2 / 3, abs=0.01)]


def test_no_mistakes_no_empty_mistakes_header(trained, colour_data):
    html = render_html(evaluate(trained, fewtune.load_dataset(colour_data)), "colours")
    assert "Most confident mistakes" not in html and 'id="no-mistakes"' in html


def test_evaluate_report_in_a_browser(trained, test_with_mistakes, tmp_path, browser):
    from selenium.webdriver.common.by import By

    path = write_html(
        evaluate(trained, fewtune.load_dataset(test_with_mistakes)), tmp_path / "report.html", "colours"
    )
    browser.set_window_size(1000, 1100)
    browser.get(path.as_uri())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "evaluate-report.png"))
    thumbs = browser.find_elements(By.CSS_SELECTOR, "#mistakes figure img")
    assert len(thumbs) == 2 and all(
        browser.execute_script("return arguments[0].naturalWidth", t) > 0 for t in thumbs
    )
    wrong = browser.find_element(By.CSS_SELECTOR, "#confusion td.wrong")
    assert wrong.value_of_css_property("background-color").startswith("rgba(220, 38, 38")


def test_compare_recommendation_has_code_not_backticks():
    assert _code("`prototype` is within 0.4 points of `probe` <b>") == (
        "<code>prototype</code> is within 0.4 points of <code>probe</code> &lt;b&gt;"
    )
    assert _code("an odd ` stays") == "an odd ` stays"


def test_compare_plot_caps_accuracy_at_100_and_keeps_tied_curves_apart(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figures to look at them
    points = [
        CurvePoint(name, k, 99.0, 3.0, 5, 0.01 * k, 30.0) for k in (1, 5) for name in ("prototype", "probe")
    ]
    write_report(
        Comparison(points, 30, ["a", "b"], "with 5 examples per class, `prototype` ..."), tmp_path, "tie"
    )
    axis = figures[0].axes[0]
    assert axis.get_ylim()[1] == 100 and axis.get_ylabel() == "accuracy on held-out images"
    assert [t.get_text() for t in axis.get_yticklabels()][-1] == "100%"
    assert [c.get_label() for c in axis.containers] == ["prototype", "probe"]
    lines = [c.lines[0] for c in axis.containers]  # each strategy's data line
    assert len(lines) == 2 and lines[0].get_marker() != lines[1].get_marker()
    assert list(lines[0].get_xdata()) != list(lines[1].get_xdata())  # nudged apart: both visible
    for bars in axis.collections:  # error bars end at 100%
        assert max(seg[:, 1].max() for seg in bars.get_segments()) <= 100
    html = (tmp_path / "index.html").read_text()
    assert "`" not in html and "<code>prototype</code>" in html
    assert "Mistakes of" not in html and 'id="no-mistakes"' in html  # no header over nothing


class SlowFirstCall:
    """A backbone whose first forward pays a one-off cost, as oneDNN's first call does; later
    calls are free, so the test measures the warm-up's exclusion, not this machine's speed."""

    def __init__(self, backbone):
        self.dim, self.preprocessing, self.calls = backbone.dim, backbone.preprocessing, 0

    def embed(self, images):
        self.calls += 1
        if self.calls == 1:
            time.sleep(1.0)
        return torch.ones(len(images), self.dim)


def test_prediction_latency_is_measured_warm(trained, colour_data):
    backbone = SlowFirstCall(trained.backbone)
    ms = _predict_ms(backbone, trained.head, sorted(colour_data.rglob("*.png"))[:4])
    assert backbone.calls == 4 and ms < 500  # the warm-up call is not counted


def test_compare_report_in_a_browser(capsys, tmp_path, tiny_weights, browser):
    from selenium.webdriver.common.by import By

    data = tmp_path / "data"
    for c, colour in enumerate([(220, 30, 30), (30, 200, 40), (30, 40, 220)]):
        for i in range(6):
            make_image(data / f"class{c}" / f"{i}.png", colour, noise_seed=10 * c + i)
    report = tmp_path / "report"
    flags = ["--backbone", "test_efficientnet", "--weights", tiny_weights, "-q"]
    code, _, err = run(capsys, "compare", data, "--shots", "1,2", "--draws", "2", "-o", report, *flags)
    assert code == 0, err
    browser.set_window_size(1000, 1400)
    browser.get((report / "index.html").as_uri())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "compare-report.png"))
    assert "`" not in browser.find_element(By.ID, "recommendation").text
    assert browser.find_elements(By.CSS_SELECTOR, "#recommendation code")
    assert "warm" in browser.find_element(By.ID, "results").text
