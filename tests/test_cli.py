"""The command line: real invocations of `fewtune ...` through its entry point."""

import json
import subprocess
import sys

import pytest

from fewtune.app.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(list(map(str, argv)))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def tiny_flags(tiny_weights) -> list[str]:
    return ["--backbone", "test_efficientnet", "--weights", str(tiny_weights)]


def test_train_predict_info(capsys, colour_data, tmp_path, tiny_flags):
    model = tmp_path / "colours.fewtune"
    code, _, err = run(capsys, "train", colour_data, "-o", model, "--strategy", "probe", *tiny_flags)
    assert code == 0, err
    assert "trained probe on 3 classes, 9 images" in err and "l2 chosen by cross-validation" in err

    code, out, _ = run(capsys, "predict", model, colour_data / "red", "--top-k", "2", "--json", "-q")
    results = json.loads(out)
    assert code == 0 and len(results) == 3
    assert set(results[0]) == {
        "path",
        "label",
        "score",
        "top_k",
        "is_unknown",
        "nearest",
        "unknown_probability",
        "novelty",
        "probabilities",
    }
    assert list(results[0]["probabilities"]) == ["blue", "green", "red"]
    assert results[0]["top_k"][0] == {"label": results[0]["label"], "score": results[0]["score"]}
    assert len(results[0]["top_k"]) == 2

    code, out, _ = run(capsys, "predict", model, colour_data / "red" / "0.png", "--csv", "-q")
    assert (
        out.splitlines()[0] == "path,label,score,top_k,is_unknown,novelty,nearest,unknown_probability"
        and len(out.splitlines()) == 2
    )

    code, out, _ = run(capsys, "predict", model, str(colour_data / "*" / "1.png"), "-q")
    assert code == 0 and out.count("1.png") == 3

    code, out, _ = run(capsys, "info", model)
    assert code == 0 and "strategy:  probe" in out and "blue (3), green (3), red (3)" in out
    assert "probabilities: temperature" in out and "open set: inputs with novelty >" in out
    code, out, _ = run(capsys, "info", model, "--json")
    assert json.loads(out)["classes"] == ["blue", "green", "red"]


def test_default_output_path(capsys, colour_data, tiny_flags):
    code, _, err = run(capsys, "train", colour_data, *tiny_flags, "-q")
    assert code == 0, err
    assert (colour_data.with_name("colours.fewtune") / "config.json").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "{tmp}/nowhere", "-o", "{tmp}/m"], r"nowhere: no such file or folder"),
        (
            ["train", "{data}", "-o", "{tmp}/m", "--strategy", "magic"],
            "unknown strategy .magic.: use one of auto, prototype, probe",
        ),
        (
            ["train", "{data}", "-o", "{tmp}/m", "--l2", "0.1"],
            "--l2 applies to --strategy probe only, not auto",
        ),
        (["train", "{data}", "-o", "{tmp}/m", "--backbone", "nope"], "unknown backbone 'nope'"),
        (["predict", "{tmp}", "x.jpg"], r"not a fewtune classifier \(no config.json\)"),
        (["info", "{tmp}"], r"not a fewtune classifier \(no config.json\)"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, colour_data, tmp_path, argv, message):
    import re

    argv = [a.format(tmp=tmp_path, data=colour_data) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert re.search(message, err), err


def test_predict_with_a_label_instead_of_a_path(capsys, colour_data, tmp_path, tiny_flags):
    run(capsys, "train", colour_data, "-o", tmp_path / "m", *tiny_flags, "-q")
    code, _, err = run(capsys, "predict", tmp_path / "m", "apple")
    assert code == 2 and "apple: not a file, folder or glob that matches images" in err


def test_corrupt_image_in_training_data(capsys, colour_data, tmp_path, tiny_flags):
    (colour_data / "red" / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    code, _, err = run(capsys, "train", colour_data, "-o", tmp_path / "m", *tiny_flags)
    assert code == 2 and "broken.jpg: not a readable image" in err and "--skip-bad" in err
    code, _, err = run(capsys, "train", colour_data, "-o", tmp_path / "m", *tiny_flags, "--skip-bad")
    assert code == 0 and "skipped bad image" in err


def test_usage_error_exits_2(capsys):
    code, _, err = run(capsys, "train")
    assert code == 2 and "Missing argument" in err


def test_internal_error_exits_1_without_traceback(capsys, monkeypatch, colour_data, tmp_path, tiny_flags):
    import fewtune.model.training

    def boom(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(fewtune.model.training, "train", boom)
    code, _, err = run(capsys, "train", colour_data, "-o", tmp_path / "m", *tiny_flags)
    assert code == 1 and "internal error: RuntimeError: kaboom" in err and "Traceback" not in err


def test_module_entry_point_and_version():
    result = subprocess.run(
        [sys.executable, "-m", "fewtune", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("fewtune ")


def test_demo_trains_and_predicts_on_the_bundled_photos(capsys, tmp_path):
    code, out, err = run(capsys, "demo", "-q", "-o", tmp_path / "demo.fewtune")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["prototype"], ["probe"])]
    assert len(rows) == 4
    accuracies = [float(r[2].rstrip("%")) for r in rows]
    assert min(accuracies) >= 85.0, out
    assert (tmp_path / "demo.fewtune" / "config.json").is_file()


def test_predict_transductive(capsys, colour_data, tmp_path, tiny_flags):
    run(capsys, "train", colour_data, "-o", tmp_path / "m", *tiny_flags, "-q")
    code, out, err = run(capsys, "predict", tmp_path / "m", colour_data, "--transductive", "--json", "-q")
    assert code == 0, err
    results = json.loads(out)
    assert len(results) == 9 and all(r["label"] == r["path"].split("/")[-2] for r in results)
    code, out, err = run(
        capsys, "predict", tmp_path / "m", colour_data, "--transductive", "--balanced", "--json", "-q"
    )
    assert code == 0 and all(r["label"] == r["path"].split("/")[-2] for r in json.loads(out)), err
    code, out, err = run(capsys, "predict", tmp_path / "m", colour_data, "--balanced")
    assert code != 0 and "add --transductive" in err


def test_finetune_from_the_command_line(capsys, colour_data, tmp_path, tiny_flags, monkeypatch):
    from fewtune.strategies.finetune import checkpoints

    model = tmp_path / "tuned.fewtune"
    flags = [
        "--strategy",
        "finetune",
        "--unfreeze",
        "top:2",
        "--epochs",
        "2",
        "--views",
        "2",
        "--batch-size",
        "4",
        "--head-epochs",
        "5",
        *tiny_flags,
    ]
    save = checkpoints.save

    def save_then_stop(folder, *args):
        save(folder, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "save", save_then_stop)
    code, _, err = run(capsys, "train", colour_data, "-o", model, *flags)
    assert code == 130 and "run again with --resume" in err and not model.exists()
    assert (tmp_path / "tuned.fewtune.checkpoint" / "state.json").is_file()
    monkeypatch.setattr(checkpoints, "save", save)

    code, _, err = run(capsys, "train", colour_data, "-o", model, *flags, "--resume")
    assert code == 0, err
    assert (
        "trained finetune" in err
        and "body: unfreeze top:2 (set by --unfreeze)" in err
        and "fine-tuned 2 epochs" in err
    )
    assert (model / "body.safetensors").is_file() and not (tmp_path / "tuned.fewtune.checkpoint").exists()
    code, out, _ = run(capsys, "predict", model, colour_data / "red", "--json", "-q")
    assert code == 0 and len(json.loads(out)) == 3

    png = tmp_path / "lr.png"
    code, out, err = run(capsys, "train", colour_data, *flags, "--lr-find", png)
    assert code == 0, err
    assert "suggested --lr" in out and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--strategy", "finetune", "--unfreeze", "top"], "--unfreeze must be auto | none | top:N | all"),
        (["--strategy", "finetune", "--augment", "heavy"], "--augment must be one of none, light, strong"),
        (["--strategy", "probe", "--lr", "0.1"], "--lr applies to --strategy finetune only, not probe"),
        (["--strategy", "finetune", "--resume"], "--resume: no checkpoint at"),
    ],
)
def test_finetune_flag_errors(capsys, colour_data, tiny_flags, flags, message):
    code, _, err = run(capsys, "train", colour_data, *flags, *tiny_flags)
    assert code == 2 and message in err and "Traceback" not in err
