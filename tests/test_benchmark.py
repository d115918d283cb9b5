"""`fewtune benchmark`: shared episodes, JSON rows, episode files."""

import json

from conftest import make_image
from test_cli import run


def test_benchmark_json_and_episode_round_trip(capsys, tmp_path, tiny_weights):
    data = tmp_path / "data"
    for c, colour in enumerate([(220, 30, 30), (30, 200, 40), (30, 40, 220), (200, 200, 30)]):
        for i in range(4):
            make_image(data / f"class{c}" / f"{i}.png", colour, noise_seed=10 * c + i)
    flags = ["--backbone", "test_efficientnet", "--weights", tiny_weights, "-q"]
    episodes = tmp_path / "episodes.json"
    code, out, err = run(
        capsys,
        "benchmark",
        data,
        "--way",
        "3",
        "--shot",
        "1,2",
        "--queries",
        "2",
        "--episodes",
        "5",
        "--save-episodes",
        episodes,
        "--json",
        *flags,
    )
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["strategy"], r["shot"]) for r in rows] == [
        ("prototype", 1),
        ("probe", 1),
        ("prototype", 2),
        ("probe", 2),
    ]
    assert set(rows[0]) == {"strategy", "way", "shot", "queries", "episodes", "mean", "ci95", "seconds"}
    assert all(r["episodes"] == 5 and 0 <= r["mean"] <= 100 for r in rows)

    saved = json.loads(episodes.read_text())
    first = saved["settings"][0]["episodes"][0]
    assert len(first["classes"]) == 3 and len(first["support"]) == 3 and len(first["query"]) == 6
    assert first["support"][0].startswith(first["classes"][0] + "/")

    code, again, _ = run(capsys, "benchmark", data, "--load-episodes", episodes, "--json", *flags)
    assert [r["mean"] for r in json.loads(again)] == [r["mean"] for r in rows]


def test_benchmark_bad_input(capsys, tmp_path, colour_data, tiny_weights):
    flags = ["--backbone", "test_efficientnet", "--weights", tiny_weights, "-q"]
    code, _, err = run(capsys, "benchmark", colour_data, "--way", "5", "--shot", "1", *flags)
    assert code == 2 and "5-way 1-shot with 15 queries needs 5 classes of at least 16 items each" in err
    code, _, err = run(capsys, "benchmark", colour_data, "--shot", "one", *flags)
    assert code == 2 and "--shot takes whole numbers" in err
    (tmp_path / "bad.json").write_text("{}")
    code, _, err = run(capsys, "benchmark", colour_data, "--load-episodes", tmp_path / "bad.json", *flags)
    assert code == 2 and "not a fewtune episodes file" in err


def test_benchmark_reports_and_removes_leaked_queries(capsys, tmp_path, tiny_weights):
    data = tmp_path / "data"
    for c, colour in enumerate([(220, 30, 30), (30, 200, 40)]):
        for i in range(3):
            make_image(data / f"class{c}" / f"{i}.png", colour, noise_seed=10 * c + i)
        (data / f"class{c}" / "copy.png").write_bytes((data / f"class{c}" / "0.png").read_bytes())
    flags = ["--backbone", "test_efficientnet", "--weights", tiny_weights, "-q", "--json"]
    args = ["benchmark", data, "--way", "2", "--shot", "1", "--queries", "3", "--episodes", "20"]
    code, out, err = run(capsys, *args, *flags)
    assert code == 0 and "query images duplicate a support image of their episode; kept" in err
    code, out, err = run(capsys, *args, "--dedupe", *flags)
    assert code == 0 and "left out (--dedupe)" in err


def test_ctrl_c_keeps_the_partial_results():
    import numpy as np
    import pytest

    from fewtune.errors import Interrupted
    from fewtune.evaluate import benchmark as bench
    from fewtune.evaluate.episodes import sample_episodes
    from fewtune.evaluate.settings import Setting

    labels = [c for c in range(3) for _ in range(4)]
    features = np.random.default_rng(0).standard_normal((12, 8)).astype(np.float32)
    setting = Setting(3, 1, 2, 0, sample_episodes(labels, 3, 1, 2, 10))
    calls = []

    def advance(n):
        calls.append(n)
        if len(calls) == 14:  # all 10 prototype episodes, then 4 of probe's
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as stop:
        bench.run_setting(["prototype", "probe"], features, labels, setting, advance)
    done, partial = stop.value.rows
    assert done["episodes"] == 10 and "interrupted" not in done
    assert partial["strategy"] == "probe" and partial["episodes"] == 4 and partial["interrupted"] is True
