"""Output you can pipe: one unwrapped row per image when stdout is not a terminal, `-` for stdin,
and `info` in words rather than Python reprs."""

from __future__ import annotations

import io
import re
import sys

import pytest
from conftest import make_image
from test_cli import run


@pytest.fixture
def model(capsys, colour_data, tmp_path, tiny_weights):
    path = tmp_path / "colours.fewtune"
    code, _, err = run(
        capsys,
        "train",
        colour_data,
        "-o",
        path,
        "--strategy",
        "probe",
        "--backbone",
        "test_efficientnet",
        "--weights",
        tiny_weights,
        "-q",
    )
    assert code == 0, err
    return path


@pytest.fixture
def deep_image(tmp_path):
    """A file whose path is far longer than a terminal is wide, with markup-like brackets in it."""
    return make_image(
        tmp_path / ("a-long-folder-name-" * 6) / "[red]photo[/red] of a red thing.png", (220, 30, 30)
    )


def test_piped_predict_prints_one_tab_separated_row_per_image(capsys, model, colour_data, deep_image):
    code, out, _ = run(capsys, "predict", model, deep_image, colour_data / "green", "--top-k", "2", "-q")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 1 + 1 + 3  # header, the deep image, three greens
    assert lines[0].split("\t") == ["image", "label", "score", "novelty", "next best"]
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(row) == 5 for row in rows)
    assert rows[0][0] == str(deep_image)  # whole, brackets included, unwrapped
    assert [row[1] for row in rows[1:]] == ["green"] * 3
    assert re.fullmatch(r"\d\.\d{3}", rows[1][2]) and re.fullmatch(r"\w+ \d\.\d\d", rows[1][4])


def test_a_terminal_gets_a_table_that_prints_brackets_as_typed(capsys, model, deep_image, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "300")
    code, out, _ = run(capsys, "predict", model, deep_image, "-q")
    assert code == 0 and "\t" not in out
    assert "[red]photo[/red] of a red thing.png" in out


def test_dash_reads_paths_from_stdin_in_order(capsys, model, colour_data, monkeypatch):
    listed = [colour_data / "blue" / "1.png", colour_data / "red" / "2.png"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{p}\n" for p in listed) + "\n"))
    code, out, err = run(capsys, "predict", model, "-", colour_data / "green" / "0.png", "-q")
    assert code == 0, err
    paths = [line.split("\t")[0] for line in out.splitlines()[1:]]
    assert paths == [*map(str, listed), str(colour_data / "green" / "0.png")]


def test_dash_with_nothing_on_stdin_is_a_one_line_error(capsys, model, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = run(capsys, "predict", model, "-")
    assert code == 2 and "-: no paths on stdin; pipe one image path a line" in err


def test_info_reads_as_a_person_would_write_it(capsys, model):
    code, out, _ = run(capsys, "info", model)
    assert code == 0
    assert not re.search(r"[{}]|\[|'|None|True|False", out), out  # no dict, list or None reprs
    assert "strategy:  probe (l2 auto, default l2 0.001, l2 grid 0.0001 / 0.001 / 0.01 / 0.1, folds 5" in out
    assert "fit: l2 " in out and "l2 chosen by cross-validation" in out
    assert 'are "unknown"' in out
    assert all(len(line) < 200 for line in out.splitlines()) and len(out.splitlines()) == 8
