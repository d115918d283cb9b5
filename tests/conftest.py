"""Shared fixtures: a tiny random-weight backbone for mechanics, the real one for end-to-end checks."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

import fewtune
from fewtune.app.demo import demo_photos

CHROMIUM = Path(os.environ.get("FEWTUNE_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("FEWTUNE_CHROMEDRIVER", "/usr/bin/chromedriver"))
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,1600",
]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test on the real packaged backbone is ``slow``: ``pytest -m "not slow"`` is the quick run."""
    for item in items:
        if "real_backbone" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's feature cache; share one cache per test session."""
    monkeypatch.setenv("FEWTUNE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "feature-cache"))


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Random weights for timm's 0.36M-parameter `test_efficientnet`, saved as a local file."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet")
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


@pytest.fixture(scope="session")
def tiny_backbone(tiny_weights) -> fewtune.Backbone:
    """At 64 px rather than its 160: the mechanics are the same, and fine-tuning it costs less."""
    backbone = fewtune.create_backbone("test_efficientnet", weights=tiny_weights)
    return replace(backbone, preprocessing={**backbone.preprocessing, "input_size": [3, 64, 64]})


@pytest.fixture(scope="session")
def real_backbone() -> fewtune.Backbone:
    return fewtune.create_backbone()


def make_image(path: Path, colour: tuple[int, int, int], size=(48, 40), noise_seed: int = 0) -> Path:
    """A small solid-colour picture with a little noise, so files differ in content."""
    generator = torch.Generator().manual_seed(noise_seed)
    pixels = (
        torch.tensor(colour).view(1, 1, 3)
        + torch.randint(-20, 20, (size[1], size[0], 3), generator=generator)
    ).clamp(0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.to(torch.uint8).numpy()).save(path)
    return path


@pytest.fixture
def colour_data(tmp_path) -> Path:
    """data/<colour>/<n>.png: three classes of three synthetic images each."""
    root = tmp_path / "colours"
    for c, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(3):
            make_image(root / name / f"{i}.png", rgb, noise_seed=10 * c + i)
    return root


@pytest.fixture
def photo_data(tmp_path) -> Path:
    """Real Caltech-101 photos: 3 per class of strawberry / scissors / sunflower to train on."""
    root = tmp_path / "photos"
    for name in ("strawberry", "scissors", "sunflower"):
        (root / name).mkdir(parents=True)
        for src in sorted((demo_photos() / name).iterdir())[:3]:
            (root / name / src.name).write_bytes(src.read_bytes())
    return root


def unseen_photos(name: str, n: int = 3) -> list[Path]:
    """Bundled photos of a class that `photo_data` does not train on."""
    return sorted((demo_photos() / name).iterdir())[-n:]


@pytest.fixture
def browser(tmp_path):
    """Headless Debian chromium through its chromedriver.

    A missing browser fails, unless `scripts/test` could not install it and said so in one line
    (FEWTUNE_BROWSER_MISSING): then the browser tests skip with that line as the reason.
    """
    if os.environ.get("FEWTUNE_BROWSER_MISSING"):
        pytest.skip(os.environ["FEWTUNE_BROWSER_MISSING"])
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(
            "this test needs Debian's chromium and chromium-driver: apt-get install -y chromium "
            "chromium-driver (.ci/run does)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    yield driver
    driver.quit()
