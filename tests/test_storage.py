"""Saving and loading under stress: kills at every step of a save, concurrent writers, leftovers."""

import json
import os
import signal
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import make_image
from safetensors.torch import load_file, save_file

import fewtune
from fewtune.errors import FewtuneError
from fewtune.storage import atomic as swap
from fewtune.storage import locks
from fewtune.storage import saved_model as storage

SRC = str(Path(fewtune.__file__).parents[1])


@pytest.fixture
def old_new(tiny_backbone, colour_data):
    """Two classifiers to save over each other: three classes, and the same without red."""
    old = fewtune.train(colour_data, "prototype", backbone=tiny_backbone)
    new = fewtune.train(colour_data, "prototype", backbone=tiny_backbone)
    new.remove_class("red")
    return old, new


@pytest.fixture
def models(tmp_path) -> Path:
    """A folder of its own (tmp_path also holds the training images)."""
    (tmp_path / "models").mkdir()
    return tmp_path / "models"


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _in_child(action, kill_at: str | None = None) -> int:
    """Run ``action`` in a forked process that SIGKILLs itself at save step ``kill_at``.
    Returns the signal that ended it, or -exit status."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 0
        try:
            if kill_at is not None:
                storage._checkpoint = lambda step: (
                    os.kill(os.getpid(), signal.SIGKILL) if step == kill_at else None
                )
            action()
        except BaseException:  # noqa: BLE001
            code = 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)


def _steps(action) -> list[str]:
    seen: list[str] = []
    original = storage._checkpoint
    storage._checkpoint = seen.append
    try:
        action()
    finally:
        storage._checkpoint = original
    return seen


def test_the_atomic_swap_is_available_here():
    """The kill tests below cover both paths; on Linux the one-step exchange is the one used."""
    assert swap._renameat2 is not None or not sys.platform.startswith("linux")


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_a_kill_at_any_step_of_a_save_leaves_a_whole_model(
    old_new, tiny_backbone, models, monkeypatch, exchange
):
    old, new = old_new
    monkeypatch.setattr(swap, "USE_EXCHANGE", exchange)
    path = models / "m.fewtune"
    create = _steps(lambda: old.save(path))
    replace = _steps(lambda: new.save(path))
    assert create == [
        "wrote strategy.safetensors",
        "wrote support.safetensors",
        "staged",
        "renamed",
        "synced",
        "done",
    ]
    swapped = "exchanged" if exchange else "retired"
    assert swapped in replace
    for step in replace:
        old.save(path)
        assert _in_child(lambda: new.save(path), kill_at=step) == signal.SIGKILL
        expected = (
            old.classes
            if replace.index(step) <= replace.index(swapped) - (1 if exchange else 0)
            else new.classes
        )
        assert storage.load(path, backbone=tiny_backbone).classes == expected, step
        assert fewtune.model.classifier.read_config(path)["classes"] == expected
        new.save(path)  # the next save repairs and cleans up whatever the kill left
        assert _listing(models) == [".m.fewtune.lock", "m.fewtune"], step
        assert storage.load(path, backbone=tiny_backbone).classes == new.classes
    for step in create:
        target = models / f"c{create.index(step)}.fewtune"
        assert _in_child(lambda: old.save(target), kill_at=step) == signal.SIGKILL
        if create.index(step) < create.index("renamed"):
            with pytest.raises(FewtuneError, match="not a fewtune classifier"):
                storage.load(target, backbone=tiny_backbone)
        else:
            assert storage.load(target, backbone=tiny_backbone).classes == old.classes
        old.save(target)
        assert storage.load(target, backbone=tiny_backbone).classes == old.classes


def test_stale_leftovers_of_other_processes_do_not_break_saves(old_new, tiny_backbone, models):
    old, new = old_new
    path = old.save(models / "m.fewtune")
    for name in (
        ".m.fewtune.1.old",
        f".m.fewtune.{os.getpid()}.old",
        ".m.fewtune.abcd1234.partial",
        f".m.fewtune.{'e' * 32}.partial",
    ):
        (models / name).mkdir()
        (models / name / "config.json").write_text("{}")
    (models / "m.fewtune.keep").mkdir()  # not ours: another model's name
    new.save(path)
    assert _listing(models) == [".m.fewtune.lock", "m.fewtune", "m.fewtune.keep"]
    assert storage.load(path, backbone=tiny_backbone).classes == new.classes


def test_eight_concurrent_saves_all_succeed(old_new, tiny_backbone, models):
    old, new = old_new
    path = models / "m.fewtune"
    with ThreadPoolExecutor(8) as pool:
        saved = list(pool.map(lambda c: c.save(path), [old, new] * 4))
    assert saved == [path] * 8
    assert storage.load(path, backbone=tiny_backbone).classes in (old.classes, new.classes)
    children = [
        threading.Thread(target=lambda c=c: results.append(_in_child(lambda: c.save(path))))
        for c in [old, new] * 4
    ]
    results: list[int] = []
    for child in children:
        child.start()
    for child in children:
        child.join()
    assert results == [0] * 8  # eight processes, each a whole save
    new.save(path)
    assert storage.load(path, backbone=tiny_backbone).classes == new.classes
    assert _listing(models) == [".m.fewtune.lock", "m.fewtune"]


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_readers_never_see_half_a_save(old_new, tiny_backbone, models, monkeypatch, exchange):
    old, new = old_new
    monkeypatch.setattr(swap, "USE_EXCHANGE", exchange)
    path = old.save(models / "m.fewtune")
    stop, seen, errors = threading.Event(), set(), []

    def read() -> None:
        while not stop.is_set():
            try:
                loaded = storage.load(path, backbone=tiny_backbone)
                assert loaded.strategy.prototypes.shape[0] == len(loaded.classes)
                seen.add(tuple(loaded.classes))
            except Exception as exc:  # noqa: BLE001 - collected for the assertion below
                errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(20):
        (new if i % 2 else old).save(path)
    stop.set()
    reader.join()
    assert errors == [] and seen <= {tuple(old.classes), tuple(new.classes)} and seen


def test_saves_keep_permissions_and_new_models_follow_the_umask(old_new, models):
    old, new = old_new
    previous = os.umask(0o027)
    try:
        path = old.save(models / "m.fewtune")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o750
    assert {stat.S_IMODE(f.stat().st_mode) for f in path.iterdir()} == {0o640}
    path.chmod(0o755)
    for file in path.iterdir():
        file.chmod(0o644)
    new.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755  # another user can still serve it
    assert {stat.S_IMODE(f.stat().st_mode) for f in path.iterdir()} == {0o644}


def test_a_format_2_folder_from_before_save_ids_still_loads(old_new, tiny_backbone, models):
    """What fewtune wrote before this module: no save_id, tensor files without metadata."""
    old, _ = old_new
    path = old.save(models / "m.fewtune")
    config = json.loads((path / "config.json").read_text())
    del config["save_id"]
    (path / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("strategy.safetensors", "support.safetensors"):
        save_file(load_file(path / name), path / name)
    loaded = storage.load(path, backbone=tiny_backbone)
    assert loaded.classes == old.classes and config["format_version"] == 2
    images = [p for p in sorted(Path(old.training["source"]).rglob("*.png"))]
    assert [p.label for p in loaded.predict(images)] == [p.label for p in old.predict(images)]


def test_tensor_files_from_another_save_are_refused(old_new, tiny_backbone, models):
    old, new = old_new
    a, b = old.save(models / "a.fewtune"), new.save(models / "b.fewtune")
    (a / "support.safetensors").write_bytes((b / "support.safetensors").read_bytes())
    with pytest.raises(
        FewtuneError, match=r"a.fewtune/support.safetensors: belongs to another save than config.json"
    ):
        storage.load(a, backbone=tiny_backbone)


def test_a_busy_model_makes_the_second_writer_wait_then_fail_clearly(old_new, models):
    old, _ = old_new
    path = old.save(models / "m.fewtune")
    told: list[str] = []
    with locks.model_lock(path):
        waiter = threading.Thread(
            target=lambda: told.append(
                _catch(lambda: locks.model_lock(path, timeout=0.3, on_wait=told.append).__enter__())
            )
        )
        waiter.start()
        waiter.join()
    assert told[0] == f"waiting for another fewtune process (pid {os.getpid()}) that is updating {path} ..."
    assert (
        told[1]
        == f"{path}: another fewtune process (pid {os.getpid()}) has been updating it for over 0.3 s; "
        "wait for it to finish and retry, or raise FEWTUNE_LOCK_TIMEOUT"
    )
    with locks.model_lock(path, timeout=0):  # released: free again
        with locks.model_lock(path, timeout=0):  # and re-entrant within a thread
            old.save(path)


def _catch(action) -> str:
    try:
        action()
    except FewtuneError as exc:
        return str(exc)
    return "no error"


def _cli(*args: str, delay: float = 0.0) -> subprocess.Popen:
    """``fewtune ARGS`` in a new process; ``delay`` widens the window between load and save."""
    code = (
        "import sys, time\n"
        "from fewtune.model.classifier import Classifier\n"
        "add = Classifier.add_examples\n"
        f"Classifier.add_examples = lambda self, *a, **k: (time.sleep({delay}), add(self, *a, **k))[1]\n"
        "from fewtune.app.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_concurrent_adds_keep_both_classes(tiny_backbone, colour_data, models, tmp_path):
    model = fewtune.train(colour_data, "prototype", backbone=tiny_backbone).save(models / "m.fewtune")
    cyan = make_image(tmp_path / "new" / "cyan.png", (30, 220, 220), noise_seed=91)
    pink = make_image(tmp_path / "new" / "pink.png", (240, 120, 200), noise_seed=92)
    runs = [
        _cli("add", str(model), str(cyan), "--label", "cyan", delay=1.0),
        _cli("add", str(model), str(pink), "--label", "pink", delay=1.0),
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert sorted(fewtune.model.classifier.read_config(model)["classes"]) == [
        "blue",
        "cyan",
        "green",
        "pink",
        "red",
    ]
    assert any(
        "waiting for another fewtune process" in err for _, err in outputs
    )  # one of them waited, and said so


def test_a_writer_that_cannot_get_the_lock_exits_2_with_one_line(tiny_backbone, colour_data, models):
    model = fewtune.train(colour_data, "prototype", backbone=tiny_backbone).save(models / "m.fewtune")
    with locks.model_lock(model):
        run = subprocess.run(
            [sys.executable, "-m", "fewtune", "remove", str(model), "--label", "red"],
            env={**os.environ, "PYTHONPATH": SRC, "FEWTUNE_LOCK_TIMEOUT": "0.5"},
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert run.returncode == 2, run.stderr
    assert (
        "has been updating it for over 0.5 s; wait for it to finish and retry" in run.stderr
        and "Traceback" not in run.stderr
    )
    assert fewtune.model.classifier.read_config(model)["classes"] == ["blue", "green", "red"]


def test_eight_concurrent_server_saves_to_one_name_all_succeed(tiny_backbone, models, tmp_path):
    from fastapi.testclient import TestClient

    from fewtune.app.server import ServerConfig, create_app

    with TestClient(
        base_url="http://127.0.0.1:8000",
        app=create_app(tiny_backbone, config=ServerConfig(models_dir=models)),
    ) as client:  # a host the server accepts
        for name, rgb in (("cyan", (30, 220, 220)), ("pink", (240, 120, 200))):
            image = make_image(tmp_path / f"{name}.png", rgb).read_bytes()
            assert (
                client.post(
                    f"/classes/{name}/examples", files=[("file", (f"{name}.png", image, "image/png"))]
                ).status_code
                == 200
            )
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: client.post("/models/save?name=same").status_code, range(8)))
        assert codes == [200] * 8
        assert client.post("/models/save?name=same").status_code == 200  # and later saves still work
    assert storage.load(models / "same.fewtune", backbone=tiny_backbone).classes == ["cyan", "pink"]
    assert _listing(models) == [".same.fewtune.lock", "same.fewtune"]
