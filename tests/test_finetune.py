"""Fine-tuning: stages, learning rates, the loop's guarantees, checkpoints, and the strategy end to end."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import fewtune
from fewtune.errors import FewtuneError, Interrupted
from fewtune.features.weights import state_sha256
from fewtune.strategies import Finetune
from fewtune.strategies.finetune import checkpoints, decision, stages
from fewtune.strategies.finetune.config import FinetuneConfig
from fewtune.strategies.finetune.decision import choose_body, imagenet_familiarity, leave_one_out_accuracy
from fewtune.strategies.finetune.head import CosineHead
from fewtune.strategies.finetune.loop import tune_body
from fewtune.strategies.finetune.lr_finder import lr_find
from fewtune.strategies.finetune.stages import SplitBody, layer_groups, param_groups, unfreeze
from fewtune.strategies.finetune.views import load_pictures
from tests.conftest import unseen_photos

FAST = dict(views=2, batch_size=4, epochs=2, head_epochs=5)


def support(folder):
    dataset = fewtune.load_dataset(folder)
    return load_pictures(dataset.paths), torch.tensor(dataset.labels), len(dataset.classes)


@pytest.mark.parametrize(
    "setting, flag",
    [
        ({"unfreeze": "top:x"}, "--unfreeze"),
        ({"unfreeze": "top:0"}, "--unfreeze"),
        ({"augment": "wild"}, "--augment"),
        ({"lr": -1.0}, "--lr"),
        ({"layer_decay": 1.5}, "--layer-decay"),
        ({"val_split": 1.0}, "--val-split"),
        ({"epochs": 0}, "--epochs"),
    ],
)
def test_config_errors_name_the_flag(setting, flag):
    with pytest.raises(ValueError, match=f"^{flag} must be"):
        FinetuneConfig(**setting)
    with pytest.raises(FewtuneError, match=flag):
        fewtune.create_strategy("finetune", **setting)


def test_layer_groups_cover_the_body_once_and_never_the_classifier(tiny_backbone):
    model = tiny_backbone.model
    groups = layer_groups(model)
    names = [n for g in groups for n in g]
    assert len(names) == len(set(names))
    assert set(names) == {n for n, _ in model.named_parameters() if not n.startswith("classifier.")}
    assert groups[0][0].startswith("conv_stem") and "bn2.weight" in groups[-1]


def test_unfreeze_opens_exactly_the_top_stages(tiny_backbone):
    model = copy.deepcopy(tiny_backbone.model)
    groups = layer_groups(model)
    opened = unfreeze(model, top=2)
    assert opened == groups[::-1][:2]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(groups[-1] + groups[-2])
    unfreeze(model)  # all
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for g in groups for n in g}
    stages.freeze(model)
    assert not any(p.requires_grad for p in model.parameters())


def test_param_groups_follow_the_config(tiny_backbone):
    model = copy.deepcopy(tiny_backbone.model)
    unfreeze(model, top=3)
    config = FinetuneConfig(lr=0.02, body_lr=0.004, layer_decay=0.5, weight_decay=0.03)
    head = CosineHead(torch.randn(3, tiny_backbone.dim))
    groups = {g["name"]: g for g in param_groups(model, head, config)}
    top = len(layer_groups(model)) - 1
    assert groups["head"]["lr"] == 0.02 and groups["head"]["weight_decay"] == 0.03
    assert groups["head (no decay)"]["params"] == [head.scale]
    for depth in range(3):
        assert groups[f"stage {top - depth}"]["lr"] == pytest.approx(0.004 * 0.5**depth)
        assert groups[f"stage {top - depth}"]["weight_decay"] == 0.03
        assert all(p.ndim == 1 for p in groups[f"stage {top - depth} (no decay)"]["params"])
        assert groups[f"stage {top - depth} (no decay)"]["weight_decay"] == 0.0
    assert f"stage {top - 3}" not in groups
    assert sum(len(g["params"]) for g in groups.values()) == 2 + sum(
        p.requires_grad for p in model.parameters()
    )


@pytest.mark.parametrize("top", [2, None])
def test_split_body_computes_the_same_features(tiny_backbone, top):
    model = copy.deepcopy(tiny_backbone.model)
    unfreeze(model, top=top)
    body = SplitBody(model)
    assert (body.first_open is None) == (top is None)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(body.top(body.bottom(images)), tiny_backbone.embed(images), atol=1e-5)


def test_tuning_moves_only_the_open_stages_and_keeps_batchnorm_statistics(tiny_backbone, colour_data):
    pictures, labels, classes = support(colour_data)
    backbone = copy.deepcopy(tiny_backbone)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    result = tune_body(backbone, pictures, labels, classes, FinetuneConfig(**FAST), top=1)
    after = backbone.model.state_dict()
    top = set(layer_groups(backbone.model)[-1])
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= top
    assert not any("running_" in k for k in changed)
    assert not any(p.requires_grad for p in backbone.model.parameters()) and not backbone.model.training
    assert (
        result.views == 2 * len(labels) and result.epochs == 2 and result.steps == 2 * -(-result.views // 4)
    )
    assert [row["epoch"] for row in result.history] == [1, 2]


def test_same_seed_same_model(tiny_backbone, colour_data):
    pictures, labels, classes = support(colour_data)
    hashes = []
    for seed in (0, 0, 1):
        backbone = copy.deepcopy(tiny_backbone)
        tune_body(backbone, pictures, labels, classes, FinetuneConfig(**FAST, seed=seed), top=2)
        hashes.append(state_sha256(backbone.model.state_dict()))
    assert hashes[0] == hashes[1] != hashes[2]


def test_interrupt_leaves_a_checkpoint_and_resume_continues_from_it(
    tiny_backbone, colour_data, tmp_path, monkeypatch
):
    pictures, labels, classes = support(colour_data)
    config = FinetuneConfig(**{**FAST, "epochs": 3})
    reference = copy.deepcopy(tiny_backbone)
    tune_body(reference, pictures, labels, classes, config, top=2)

    checkpoint = tmp_path / "model.fewtune.checkpoint"
    save = checkpoints.save

    def save_then_stop(folder, *args):
        save(folder, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "save", save_then_stop)
    interrupted = copy.deepcopy(tiny_backbone)
    with pytest.raises(Interrupted, match="--resume"):
        tune_body(interrupted, pictures, labels, classes, config, top=2, checkpoint=checkpoint)
    assert json.loads((checkpoint / "state.json").read_text())["epoch"] == 1
    monkeypatch.setattr(checkpoints, "save", save)

    resumed = copy.deepcopy(tiny_backbone)
    result = tune_body(resumed, pictures, labels, classes, config, top=2, checkpoint=checkpoint, resume=True)
    assert result.resumed_from_epoch == 1 and [r["epoch"] for r in result.history] == [1, 2, 3]
    for name, value in reference.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[name], atol=1e-6), name

    with pytest.raises(FewtuneError, match="other settings \\(lr\\)"):
        other = FinetuneConfig(**{**FAST, "epochs": 3, "lr": 0.5})
        tune_body(
            copy.deepcopy(tiny_backbone),
            pictures,
            labels,
            classes,
            other,
            top=2,
            checkpoint=checkpoint,
            resume=True,
        )


def test_validation_keeps_the_best_epoch_and_may_keep_the_pretrained_body(tiny_backbone, colour_data):
    pictures, labels, classes = support(colour_data)
    backbone = copy.deepcopy(tiny_backbone)
    result = tune_body(
        backbone,
        pictures[1::3] + pictures[2::3],
        torch.cat([labels[1::3], labels[2::3]]),
        classes,
        FinetuneConfig(**{**FAST, "epochs": 4, "patience": 1}),
        top=1,
        validation=(pictures[::3], labels[::3]),
    )
    assert result.best_epoch is not None and 0 <= result.best_epoch <= result.epochs
    assert result.val_accuracy == max(
        [r.get("val_accuracy", 0) for r in result.history] + [result.val_accuracy]
    )
    if result.best_epoch == 0:
        assert state_sha256(backbone.model.state_dict()) == state_sha256(tiny_backbone.model.state_dict())


def test_lr_find_leaves_the_backbone_alone_and_plots(tiny_backbone, colour_data, tmp_path):
    pictures, labels, classes = support(colour_data)
    before = state_sha256(tiny_backbone.model.state_dict())
    found = lr_find(tiny_backbone, pictures, labels, classes, FinetuneConfig(**FAST), top=2, steps=12)
    assert state_sha256(tiny_backbone.model.state_dict()) == before
    assert found.lrs == sorted(found.lrs) and found.lrs[0] == pytest.approx(1e-5)
    assert found.lrs[0] <= found.suggestion <= found.lrs[-1]
    png = found.plot(tmp_path / "lr.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_leave_one_out_accuracy_holds_each_example_out():
    features = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.9, 0.2]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    # without itself, example 3's class mean is (0, 1): it is nearer class 0
    assert leave_one_out_accuracy(features, labels, 2) == 0.75


def test_a_body_tuned_on_one_example_a_class_is_softened(tiny_backbone, colour_data, tmp_path):
    """Its head learnt from views of one picture a class: over-confident at its own scale."""
    from fewtune.app.cli.text import describe_calibration
    from fewtune.strategies.finetune.strategy import TUNED_ONE_SHOT_TEMPERATURE

    one = tmp_path / "one"
    for folder in colour_data.iterdir():
        (one / folder.name).mkdir(parents=True)
        (one / folder.name / "0.png").write_bytes((folder / "0.png").read_bytes())
    classifier = fewtune.train(one, "finetune", backbone=tiny_backbone, unfreeze="top:2", **FAST)
    assert classifier.pretrained is not None and classifier.calibration["tuned_body"]
    assert classifier.temperature == TUNED_ONE_SHOT_TEMPERATURE > 1
    said = describe_calibration(classifier.calibration)
    assert said.startswith(f"probabilities: temperature {TUNED_ONE_SHOT_TEMPERATURE:.3g}, fitted on held-out")
    classifier.save(tmp_path / "m")  # a class added after a load keeps it: the body is the one tuned
    loaded = fewtune.load(tmp_path / "m", backbone=tiny_backbone)
    loaded.add_examples("teal", [colour_data / "blue" / "1.png"])
    assert loaded.temperature == TUNED_ONE_SHOT_TEMPERATURE and loaded.pretrained is not None


def test_strategy_never_modifies_the_callers_backbone_and_saves_the_tuned_body(
    tiny_backbone, colour_data, tmp_path, monkeypatch
):
    import fewtune.strategies.finetune.loop as module  # the strategy imports it from there when tuning

    tunes = []
    monkeypatch.setattr(module, "tune_body", _counting(module.tune_body, tunes))
    before = state_sha256(tiny_backbone.model.state_dict())
    classifier = fewtune.train(colour_data, "finetune", backbone=tiny_backbone, unfreeze="top:2", **FAST)
    # --strategy finetune tunes once: no cross-fitted tune (only auto needs its evidence), and the
    # tuned body keeps its head's own scale
    assert len(tunes) == 1 and "cross_fit" not in classifier.fit_report["body"]
    assert classifier.temperature == 1.0 and classifier.calibration["tuned_body"]
    assert state_sha256(tiny_backbone.model.state_dict()) == before and tiny_backbone.tuned_sha256 is None
    assert classifier.backbone.tuned_sha256 == state_sha256(classifier.backbone.model.state_dict())
    assert (
        classifier.backbone.fingerprint != tiny_backbone.fingerprint
    )  # tuned features get their own cache rows
    assert classifier.fit_report["body"]["unfreeze"] == "top:2" and classifier.fit_report["head"]["trained"]

    path = classifier.save(tmp_path / "tuned.fewtune")
    assert (path / "body.safetensors").is_file()
    assert (
        json.loads((path / "config.json").read_text())["backbone"]["tuned_sha256"]
        == classifier.backbone.tuned_sha256
    )
    images = sorted(colour_data.rglob("*.png"))
    expected = classifier.predict(images)
    loaded = fewtune.load(path, backbone=tiny_backbone)
    assert state_sha256(tiny_backbone.model.state_dict()) == before
    again = loaded.predict(images)
    assert [p.label for p in again] == [p.label for p in expected]
    assert [p.score for p in again] == pytest.approx(
        [p.score for p in expected], abs=2e-6
    )  # 6-digit rounding of float32

    classifier.add_examples("purple", images[:1])  # a new class from one example keeps the tuned body
    assert (
        classifier.classes[-1] == "purple"
        and classifier.backbone.tuned_sha256 == loaded.backbone.tuned_sha256
    )

    (path / "body.safetensors").write_bytes((path / "body.safetensors").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(FewtuneError, match="body.safetensors: does not match the hash"):
        fewtune.load(path, backbone=tiny_backbone)


def _counting(function, calls: list):
    def counted(*args, **kwargs):
        calls.append(1)
        return function(*args, **kwargs)

    return counted


def test_unfreeze_none_trains_the_head_on_cached_features_only(tiny_backbone, colour_data):
    classifier = fewtune.train(
        colour_data, "finetune", backbone=tiny_backbone, unfreeze="none", head_epochs=10
    )
    assert classifier.backbone is tiny_backbone and classifier.backbone.tuned_sha256 is None
    assert classifier.fit_report["body"] == {"unfreeze": "none", "why": "set by --unfreeze"}
    assert classifier.fit_report["head"]["trained"] is True


def test_auto_keeps_the_pretrained_body_on_imagenet_like_photos(real_backbone, photo_data):
    classifier = fewtune.train(photo_data, "finetune", backbone=real_backbone)
    body = classifier.fit_report["body"]
    assert body["unfreeze"] == "none" and "held-out support images" in body["why"]
    assert classifier.backbone is real_backbone
    for name in ("strawberry", "scissors", "sunflower"):
        assert {p.label for p in classifier.predict(unseen_photos(name), open_set=False)} == {name}


def test_auto_at_one_shot_asks_the_imagenet_classifier(real_backbone, photo_data):
    from fewtune.features.embedding import embed_files

    dataset = fewtune.load_dataset(photo_data)
    features = embed_files(real_backbone, dataset.paths[::3]).features
    assert imagenet_familiarity(real_backbone, features) > 0.25  # real photos of ImageNet-like objects
    top, why = choose_body(Finetune().config, real_backbone, features, np.arange(3), 3)
    assert top == 0 and "ImageNet-like" in why


def test_auto_never_starts_a_tune_on_imagenet_like_photos(real_backbone, photo_data, monkeypatch):
    """Even when frozen features look short of HEADROOM, ``auto`` (require_gain) keeps the body
    on everyday photos: the cross-fitted tune costs seconds and never paid on Caltech."""
    from fewtune.features.embedding import embed_files

    monkeypatch.setattr(decision, "HEADROOM", 1.01)  # leave-one-out alone would say "could pay"
    dataset = fewtune.load_dataset(photo_data)
    features = embed_files(real_backbone, dataset.paths).features
    labels = np.array(dataset.labels)
    top, why = choose_body(Finetune().config, real_backbone, features, labels, 3, require_gain=True)
    assert top == 0 and "ImageNet-like" in why
    top, _ = choose_body(
        Finetune().config, real_backbone, features, labels, 3
    )  # --strategy finetune: may tune
    assert top == decision.AUTO_TOP


def test_fine_tuning_real_photos_end_to_end(real_backbone, photo_data, tmp_path):
    classifier = fewtune.train(
        photo_data, "finetune", backbone=real_backbone, unfreeze="top:1", views=2, epochs=1, head_epochs=20
    )
    assert classifier.fit_report["body"]["result"]["steps"] >= 1
    loaded = fewtune.load(classifier.save(tmp_path / "photos.fewtune"))
    for name in ("strawberry", "scissors", "sunflower"):
        assert {p.label for p in loaded.predict(unseen_photos(name), open_set=False)} == {name}


def test_benchmark_fine_tunes_per_episode(tiny_backbone, colour_data):
    from fewtune.evaluate.benchmark import Images, run_setting
    from fewtune.evaluate.episodes import sample_episodes
    from fewtune.evaluate.settings import Setting
    from fewtune.features.embedding import embed_files

    dataset = fewtune.load_dataset(colour_data)
    features = embed_files(tiny_backbone, dataset.paths).features
    episodes = sample_episodes(dataset.labels, 3, 1, 2, 2, seed=0)
    setting = Setting(3, 1, 2, 0, episodes)
    with pytest.raises(FewtuneError, match="learns from the images"):
        run_setting(["finetune:unfreeze=top:1"], features, dataset.labels, setting)
    [row] = run_setting(
        ["finetune:unfreeze=top:1"],
        features,
        dataset.labels,
        setting,
        images=Images(tiny_backbone, dataset.paths),
    )
    assert row["episodes"] == 2 and 0 <= row["mean"] <= 100
