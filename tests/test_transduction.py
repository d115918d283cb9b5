import numpy as np
import pytest

from fewtune.model import transduction
from fewtune.strategies import Prototype


def blobs(counts: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One support example per class, far from its class centre, and queries around the centres
    (non-negative, like pooled CNN features)."""
    rng = np.random.default_rng(seed)
    centres = rng.random((len(counts), 32)) * 4
    support = np.maximum(centres + rng.standard_normal((len(counts), 32)) * 1.2, 0)
    labels = np.repeat(np.arange(len(counts)), counts)
    queries = np.maximum(centres[labels] + rng.standard_normal((len(labels), 32)) * 1.2, 0)
    return support.astype(np.float32), queries.astype(np.float32), labels


def accuracy(strategy: Prototype, support: np.ndarray, queries: np.ndarray, labels: np.ndarray) -> float:
    strategy.fit(support, np.arange(len(support)), len(support))
    return float((strategy.logits(queries).argmax(1) == labels).mean())


def test_a_balanced_batch_refines_the_classes():
    support, queries, labels = blobs([30, 30, 30, 30], seed=5)  # a draw the plain prototypes get 84% of
    plain = accuracy(Prototype(), support, queries, labels)
    estimated = accuracy(Prototype(transductive=True), support, queries, labels)
    balanced = accuracy(Prototype(transductive="balanced"), support, queries, labels)
    assert plain < 0.95 and estimated > plain and balanced > plain


def test_a_lopsided_batch_is_safe_only_without_the_balance_assumption():
    support, queries, labels = blobs([80, 5, 5])
    plain = accuracy(Prototype(), support, queries, labels)
    estimated = accuracy(Prototype(transductive=True), support, queries, labels)
    balanced = accuracy(Prototype(transductive="balanced"), support, queries, labels)
    assert estimated >= plain - 0.02
    assert balanced < estimated  # forced into equal shares, most of the big class is mislabelled


def test_balanced_assignments_are_a_transport_plan():
    support, queries, _ = blobs([10, 10, 10])
    plan = np.exp(transduction.log_probabilities(support, np.arange(3), 3, queries, balanced=True))
    np.testing.assert_allclose(plan.sum(1), np.ones(30), atol=1e-3, rtol=0)
    np.testing.assert_allclose(plan.sum(0), np.full(3, 10.0), atol=1e-2, rtol=0)


def test_one_input_is_classified_alone():
    support, queries, _ = blobs([3, 3])
    plain, refined = Prototype(), Prototype(transductive=True)
    for strategy in (plain, refined):
        strategy.fit(support, np.arange(2), 2)
    np.testing.assert_allclose(refined.logits(queries[:1]), plain.logits(queries[:1]))


def test_a_transductive_prototype_survives_its_state_dict():
    support, queries, _ = blobs([10, 10])
    fitted, loaded = Prototype(transductive=True), Prototype(transductive=True)
    fitted.fit(support, np.arange(2), 2)
    loaded.load_state_dict(fitted.state_dict())
    np.testing.assert_allclose(loaded.logits(queries), fitted.logits(queries))


def test_unknown_transductive_mode_is_refused():
    with pytest.raises(ValueError, match="'balanced'"):
        Prototype(transductive="even")


def test_a_balanced_assignment_that_overturns_the_models_answers_is_refused():
    """With 2+ examples a class, a balanced assignment may change no more of the model's own
    answers than the support set's leave-one-out error rate (at least MIN_CHANGES)."""
    centres, queries, labels = blobs([20, 20, 20, 20], seed=3)
    shifted = centres + np.random.default_rng(4).random(centres.shape).astype(np.float32) * 0.1
    support = np.concatenate([centres, shifted])
    support_labels = np.tile(np.arange(4), 2)
    decided = transduction.decide(support, support_labels, 4, queries)
    assert decided is not None and decided[1] == "balanced"
    agreeing = decided[0].argmax(1)
    again = transduction.decide(support, support_labels, 4, queries, agreeing)
    assert again is not None and np.array_equal(again[0].argmax(1), agreeing)
    assert transduction.decide(support, support_labels, 4, queries, (agreeing + 1) % 4) is None
