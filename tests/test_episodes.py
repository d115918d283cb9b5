"""Episode sampling and confidence intervals: pure index bookkeeping, no model."""

import math

import pytest

from fewtune.evaluate.episodes import Episode, mean_ci95, sample_episodes

# 8 classes of 10 items, 2 of 3 items, interleaved so an index alone doesn't give its class away
LABELS = [i % 8 for i in range(80)] + [8, 9, 8, 9, 8, 9]


def test_same_seed_same_episodes():
    first = sample_episodes(LABELS, way=5, shot=2, queries=3, episodes=20, seed=7)
    again = sample_episodes(LABELS, way=5, shot=2, queries=3, episodes=20, seed=7)
    assert first == again


def test_different_seeds_differ():
    a = sample_episodes(LABELS, way=5, shot=2, queries=3, episodes=20, seed=0)
    b = sample_episodes(LABELS, way=5, shot=2, queries=3, episodes=20, seed=1)
    assert a != b


@pytest.mark.parametrize(("way", "shot", "queries"), [(5, 1, 9), (3, 5, 5), (8, 2, 8)])
def test_counts_labels_and_disjointness(way, shot, queries):
    episodes = sample_episodes(LABELS, way=way, shot=shot, queries=queries, episodes=50, seed=3)
    assert len(episodes) == 50
    for episode in episodes:
        assert len(set(episode.classes)) == way == len(episode.classes)
        assert len(episode.support) == way * shot and len(episode.query) == way * queries
        assert not set(episode.support) & set(episode.query)
        assert len(set(episode.support + episode.query)) == way * (shot + queries)
        assert {LABELS[i] for i in episode.support + episode.query} == set(episode.classes)
        support, query = episode.local_labels(LABELS)
        assert sorted(support) == sorted(list(range(way)) * shot)
        assert sorted(query) == sorted(list(range(way)) * queries)
        assert all(episode.classes[y] == LABELS[i] for i, y in zip(episode.support, support))


def test_small_classes_are_never_drawn():
    # classes 8 and 9 have 3 items: too few for 1 shot + 3 queries
    episodes = sample_episodes(LABELS, way=8, shot=1, queries=3, episodes=30, seed=0)
    assert all(set(e.classes) == set(range(8)) for e in episodes)


def test_too_few_classes_says_how_many():
    with pytest.raises(ValueError, match=r"9 classes of at least 4 items.*only 8 of the 10 classes"):
        sample_episodes(LABELS, way=9, shot=1, queries=3, episodes=1)


def test_bad_counts():
    with pytest.raises(ValueError, match="shot >= 1"):
        sample_episodes(LABELS, way=5, shot=0, queries=3, episodes=1)


def test_local_labels_by_hand():
    episode = Episode(classes=[2, 5], support=[0, 1], query=[2, 3])
    assert episode.local_labels([5, 2, 2, 5]) == ([1, 0], [0, 1])


def test_mean_ci95_by_hand():
    mean, half = mean_ci95([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9)
    assert half == pytest.approx(1.96 * 0.1 / math.sqrt(3))
    assert mean_ci95([0.7]) == (0.7, 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        mean_ci95([])


def test_fewer_episodes_are_a_prefix():
    # a benchmark may score a slow strategy on the first N episodes only: they must be the same tasks
    many = sample_episodes(LABELS, way=5, shot=1, queries=3, episodes=30, seed=5)
    assert sample_episodes(LABELS, way=5, shot=1, queries=3, episodes=10, seed=5) == many[:10]
