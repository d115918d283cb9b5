"""What fewtune prints is what the user typed: paths, labels and install hints are never read as
rich markup ("[/]" crashed, "[bold red]b" printed as "b", "fewtune[serve]" as "fewtune")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import COLOURS, make_image
from test_cli import run as run_cli


def run(capsys, *argv) -> tuple[int, str, str]:
    code, out, err = run_cli(capsys, *argv)
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture
def tiny_flags(tiny_weights) -> list[str]:
    return ["--backbone", "test_efficientnet", "--weights", str(tiny_weights)]


def test_markup_in_paths_and_labels_prints_as_typed(capsys, monkeypatch, tmp_path, tiny_flags):
    monkeypatch.chdir(tmp_path)  # short relative paths: no table folds them
    data = Path("d[/]ata")  # a folder "d[" holding "ata": the path reads d[/]ata
    for c, (name, rgb) in enumerate(zip(["[bold red]b", "[red]", "plain"], COLOURS.values(), strict=True)):
        for i in range(2):
            make_image(data / name / f"[bold red]{i}.png", rgb, noise_seed=10 * c + i)
    model = "m[/].fewtune"

    code, _, err = run(capsys, "train", data, "-o", model, "--strategy", "prototype", *tiny_flags)
    assert code == 0, err
    assert f"-> {model}" in err and "examples per class: [bold red]b 2, [red] 2, plain 2" in err

    code, out, err = run(capsys, "predict", model, data / "[bold red]b" / "[bold red]0.png", "-q")
    assert code == 0, err
    assert "d[/]ata/[bold red]b/[bold red]0.png\t[bold red]b\t" in out  # piped: one tab-separated row

    code, out, _ = run(capsys, "info", model)
    assert (
        code == 0 and out.startswith(f"{model}  (format") and "[bold red]b (2), [red] (2), plain (2)" in out
    )

    code, out, err = run(capsys, "evaluate", model, data, "-q")
    assert code == 0, err
    assert "\n [bold red]b " in out and "\n [red] " in out  # the per-class table and the matrix

    code, _, err = run(capsys, "add", model, data / "plain", "--label", "x[/]")
    assert code == 0 and "added class 'x[/]' with 2 images" in err
    code, _, err = run(capsys, "remove", model, "--label", "x[/]")
    assert code == 0 and "removed class 'x[/]'" in err

    code, _, err = run(capsys, "predict", model, "x/a[/]", "-q")
    assert code == 2 and err.startswith("error: x/a[/]: not a file") and len(err.strip().splitlines()) == 1


def test_an_error_quoting_markup_is_printed_whole(capsys):
    code, _, err = run(capsys, "info", "[bold red]b[/]")
    assert code == 2 and err.startswith("error: [bold red]b[/]: not a fewtune classifier")


def test_progress_titles_are_not_markup(capsys, monkeypatch):
    """A status quoting a name ("[/]") must not crash the bar."""
    import fewtune.progress

    clock = iter(range(0, 100, 2))
    monkeypatch.setattr(fewtune.progress.time, "monotonic", lambda: float(next(clock)))
    with fewtune.progress.ProgressBar("embedding [bold red]b", 3) as advance:
        advance(1, status="x[/]")
        advance(1, status="[/]")
    assert "Traceback" not in capsys.readouterr().err


# ---------------------------------------------------------------- install hints print as typed


def test_serve_hint(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the extra were not installed
    code, _, err = run(capsys, "serve")
    assert code == 2
    assert err.strip() == "error: the server needs its extra: pip install 'fewtune[serve]'"


def test_report_hint(capsys, monkeypatch, colour_data, tmp_path, tiny_flags):
    for name in ("matplotlib", "matplotlib.ticker", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)
    code, _, err = run(
        capsys,
        "compare",
        colour_data,
        "-o",
        tmp_path / "report",
        "--shots",
        "1",
        "--draws",
        "2",
        "--strategies",
        "prototype",
        "-q",
        *tiny_flags,
    )
    assert code == 2
    assert err.strip() == "error: the report's plots need matplotlib: pip install 'fewtune[report]'"


def test_lr_find_hint(capsys, monkeypatch, colour_data, tmp_path):
    import fewtune.model.training
    from fewtune.strategies.finetune.lr_finder import LrFind

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(
        fewtune.model.training,
        "find_lr",
        lambda *a, **k: LrFind(lrs=[1e-3, 1e-2], losses=[1.0, 0.5], suggestion=1e-2),
    )
    code, _, err = run(
        capsys, "train", colour_data, "--strategy", "finetune", "--lr-find", tmp_path / "lr.png"
    )
    assert code == 2
    assert (
        err.strip()
        == "error: plotting the learning-rate finder needs matplotlib: pip install 'fewtune[report]'"
    )


def test_bench_hint():
    script = (
        "import sys, runpy; sys.modules['easyfsl'] = None; sys.argv = ['peers.py', '--data', 'x']; "
        "runpy.run_path('bench/peers.py', run_name='__main__')"
    )
    root = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=root, env=env, timeout=120
    )
    assert done.returncode == 1
    assert done.stderr.strip().endswith('install them with pip install -e ".[bench]"'), done.stderr


def test_a_class_name_with_a_newline_is_refused_in_one_line(capsys, tmp_path, tiny_flags):
    """A folder name may hold a newline; as a class name it would break every line it is printed in."""
    for c, (name, rgb) in enumerate(zip(["scis\nsors", "plain"], COLOURS.values(), strict=False)):
        for i in range(2):
            make_image(tmp_path / "data" / name / f"{i}.png", rgb, noise_seed=10 * c + i)
    code, _, err = run(capsys, "train", tmp_path / "data", "-o", tmp_path / "m.fewtune", *tiny_flags)
    assert code == 2 and "'scis\\nsors' holds a newline" in err and len(err.strip().splitlines()) == 1
