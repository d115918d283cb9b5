import numpy as np
import pytest

from fewtune import create_strategy, list_strategies
from fewtune.errors import FewtuneError
from fewtune.strategies import Probe, Prototype, Strategy


def blobs(per_class: int, num_classes: int = 3, dim: int = 16, seed: int = 0):
    """Gaussian clusters around random centres: a separable toy embedding space."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, dim)) * 3
    labels = np.repeat(np.arange(num_classes), per_class)
    return (centres[labels] + rng.standard_normal((len(labels), dim))).astype(np.float32), labels


def unit_rows(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_registry():
    assert list_strategies() == ["auto", "prototype", "probe", "finetune"]
    with pytest.raises(
        FewtuneError, match="unknown strategy .magic.: use one of auto, prototype, probe, finetune"
    ):
        create_strategy("magic")
    with pytest.raises(FewtuneError, match="strategy 'prototype': temperature must be > 0"):
        create_strategy("prototype", temperature=0)


def test_base_is_abstract():
    class Incomplete(Strategy):
        name = "incomplete"

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()


def test_prototype_works_from_one_example():
    features, labels = blobs(per_class=1)
    strategy = Prototype()
    strategy.fit(features, labels, 3)
    assert strategy.logits(features).argmax(1).tolist() == [0, 1, 2]


def test_prototype_is_the_normalised_class_mean():
    features, labels = blobs(per_class=4)
    strategy = Prototype(temperature=0.5)
    strategy.fit(features, labels, 3)
    unit = unit_rows(features)
    expected = unit_rows(unit[labels == 1].mean(0))
    np.testing.assert_allclose(strategy.prototypes[1], expected, rtol=1e-5)
    np.testing.assert_allclose(strategy.logits(features[:1])[0, 1], unit[0] @ expected / 0.5, rtol=1e-5)


def test_probe_learns_and_cross_validates():
    features, labels = blobs(per_class=6)
    strategy = Probe()
    strategy.fit(features, labels, 3)
    assert (strategy.logits(features).argmax(1) == labels).all()
    report = strategy.fit_report()
    assert report["l2_chosen_by"] == "cross-validation" and report["l2"] in strategy.l2_grid


def test_probe_with_too_few_examples_uses_the_default():
    features, labels = blobs(per_class=2)
    strategy = Probe(default_l2=0.05)
    strategy.fit(features, labels, 3)
    assert strategy.fit_report() == {"l2": 0.05, "l2_chosen_by": "default (< 3 examples in a class)"}


def test_probe_is_deterministic():
    features, labels = blobs(per_class=5)
    heads = []
    for _ in range(2):
        strategy = Probe(seed=3)
        strategy.fit(features, labels, 3)
        heads.append(strategy.state_dict())
    assert np.array_equal(heads[0]["weight"], heads[1]["weight"])
    assert np.array_equal(heads[0]["bias"], heads[1]["bias"])


def test_probe_balances_classes():
    """A class with 1 example among classes with 20 still gets its own region."""
    features, labels = blobs(per_class=20, seed=1)
    keep = np.concatenate([np.flatnonzero(labels != 2), np.flatnonzero(labels == 2)[:1]])
    strategy = Probe(l2=1e-2)
    strategy.fit(features[keep], labels[keep], 3)
    assert (strategy.logits(features[labels == 2]).argmax(1) == 2).mean() > 0.9


@pytest.mark.parametrize("name", ["prototype", "probe"])
def test_state_round_trip(name):
    features, labels = blobs(per_class=3)
    strategy = create_strategy(name)
    strategy.fit(features, labels, 3)
    copy = create_strategy(name, **strategy.hyperparameters())
    copy.load_state_dict(strategy.state_dict())
    np.testing.assert_allclose(copy.predict_proba(features), strategy.predict_proba(features), rtol=1e-5)


@pytest.mark.parametrize("name", ["prototype", "probe"])
def test_every_class_needs_an_example(name):
    features, labels = blobs(per_class=2)
    with pytest.raises(ValueError, match=r"every class in \[0, 4\) needs at least one example"):
        create_strategy(name).fit(features, labels, 4)


def test_auto_keeps_the_candidate_best_on_held_out_examples():
    features, labels = blobs(per_class=4)
    strategy = create_strategy("auto")
    strategy.fit(features, labels, 3)
    report = strategy.fit_report()
    assert report["chosen"] in ("prototype", "probe") and set(report["held_out_accuracy"]) == {
        "prototype",
        "probe",
    }
    best = max(report["held_out_accuracy"].values())
    assert report["held_out_accuracy"][report["chosen"]] == best
    copy = create_strategy("auto", **strategy.hyperparameters())
    copy.load_state_dict(strategy.state_dict())
    np.testing.assert_allclose(copy.logits(features), strategy.logits(features), rtol=1e-5)


def test_auto_at_one_shot_and_bad_candidates():
    features, labels = blobs(per_class=1)
    strategy = create_strategy("auto")
    strategy.fit(features, labels, 3)
    assert strategy.fit_report()["chosen"] == "probe" and "one example" in strategy.fit_report()["why"]
    with pytest.raises(FewtuneError, match="candidates must be among"):
        create_strategy("auto", candidates=["auto"])


def test_probe_solves_the_same_problem_in_either_form(monkeypatch):
    """The span-of-the-examples form (few examples) and the direct form (many) find the same head."""
    from fewtune.strategies import probe

    x = unit_rows(np.random.default_rng(3).standard_normal((30, 50)))
    y = np.tile(np.arange(3), 10)
    dual = probe._solve(x, y, 3, 1e-2, 1000)
    monkeypatch.setattr(probe, "DUAL_MAX_N", 0)
    direct = probe._solve(x, y, 3, 1e-2, 1000)
    assert len(dual[2]) == 3 * 30 + 3 and len(direct[2]) == 3 * 50 + 3  # really two forms
    assert np.allclose(dual[0], direct[0], atol=1e-4) and np.allclose(dual[1], direct[1], atol=1e-4)


def test_probe_on_many_examples_cross_validates_a_subset_and_holds_out_every_example():
    from fewtune.strategies import probe

    rng = np.random.default_rng(4)
    classes = probe.CV_CLASSES + 10
    centres = rng.standard_normal((classes, 32))
    y = np.repeat(np.arange(classes), 12)  # 360 > LARGE_N examples
    x = (centres[y] + 0.8 * rng.standard_normal((len(y), 32))).astype(np.float32)
    assert len(y) > probe.LARGE_N
    fits = [Probe(), Probe()]
    for p in fits:
        p.fit(x, y, classes)
    held_out = fits[0].held_out_logits(x, y, classes)
    assert fits[0].fit_report()["l2_chosen_by"] == "cross-validation"
    assert held_out.shape == (len(y), classes) and (held_out.argmax(1) == y).mean() > 0.7
    assert np.array_equal(fits[0].weight, fits[1].weight)  # deterministic
    assert np.array_equal(held_out, fits[1].held_out_logits(x, y, classes))


@pytest.mark.parametrize("dual_max_n", [100, 0])
def test_probe_solves_the_uncentred_problem(monkeypatch, dual_max_n):
    """Examples are centred for the solver's sake (the bias is free): the weights and bias must
    still minimise the loss on the examples as given, far from the origin like pooled features."""
    from fewtune.strategies import probe

    monkeypatch.setattr(probe, "DUAL_MAX_N", dual_max_n)
    x = unit_rows(3 + np.random.default_rng(5).random((30, 50)))
    y = np.tile(np.arange(3), 10)
    weight, bias, _ = probe._solve(x, y, 3, 1e-2, 1000)
    # the gradient of mean cross-entropy + 1e-2/2 ||W||^2 at the solution, on the examples as given
    scores = x @ weight.T + bias
    residual = (np.exp(scores) / np.exp(scores).sum(1, keepdims=True) - np.eye(3)[y]) / len(y)
    assert np.abs(residual.T @ x + 1e-2 * weight).max() < 1e-6 and np.abs(residual.sum(0)).max() < 1e-6


def test_probe_on_many_examples_holds_out_only_what_calibration_needs(monkeypatch):
    from fewtune.strategies import probe

    monkeypatch.setattr(probe, "ENOUGH_HELD_OUT", 100)
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((30, 32))
    y = np.repeat(np.arange(30), 12)  # 360 examples: 3 folds of 120
    x = (centres[y] + 0.8 * rng.standard_normal((len(y), 32))).astype(np.float32)
    fitted = Probe()
    fitted.fit(x, y, 30)
    solves = []
    original = probe._solve
    monkeypatch.setattr(probe, "_solve", lambda *a, **k: solves.append(1) or original(*a, **k))
    logits, truth, _ = fitted.held_out(x, y, 30)
    assert len(solves) == 1 and len(logits) == len(truth) == 120 and set(truth.tolist()) == set(range(30))
    everything = fitted.held_out_logits(x, y, 30)  # the first fold is reused, two more are solved
    assert len(solves) == 3 and everything.shape == (360, 30)
    rows = (everything[:, None, :] == logits[None, :, :]).all(-1).any(1)
    assert int(rows.sum()) == 120 and np.array_equal(y[rows], truth)


def test_prototype_calibrates_on_leave_one_out_scored_like_a_new_example():
    x = np.random.default_rng(6).random((12, 8)).astype(np.float32)
    y = np.tile(np.arange(3), 4)
    prototype = Prototype()
    prototype.fit(x, y, 3)
    logits, truth, _ = prototype.held_out(x, y, 3)
    plain = prototype.held_out_logits(x, y, 3)
    unit = unit_rows(x)
    full = unit[y == y[0]].sum(0)  # example 0's class, all 4 examples
    expected = unit[0] @ (full - unit[0]) * 4 / 3 / np.linalg.norm(full)
    assert np.allclose(logits[0, y[0]] * prototype.temperature, expected)
    other = np.arange(3) != y[0]
    assert np.array_equal(logits[0, other], plain[0, other]) and np.array_equal(truth, y)
    # auto compares candidates on plain leave-one-out, as pessimistic as probe's folds
    assert prototype.held_out_accuracy(x, y, 3) == float((plain.argmax(1) == y).mean())


def test_one_shot_temperature_follows_how_alike_the_classes_look():
    from fewtune.geometry import between_class_similarity, normalize

    x, y = np.random.default_rng(7).random((30, 16)).astype(np.float32), np.tile(np.arange(5), 6)
    unit = normalize(x)
    brute = float((unit @ unit.T)[y[:, None] != y[None, :]].mean())
    assert abs(between_class_similarity(x, y) - brute) < 1e-6  # computed without an n x n matrix
    apart = np.eye(5, 16, dtype=np.float32)
    alike = apart + 2.0  # similarity 0, then about 0.9
    labels = np.arange(5)
    for strategy in (create_strategy("probe"), create_strategy("prototype")):
        low, high = (strategy.one_shot_temperature(f, labels) for f in (apart, alike))
        assert 0.25 <= low < high <= 0.5, strategy.name
    assert create_strategy("probe", l2=0.01).one_shot_temperature(apart, labels) == 1.0
