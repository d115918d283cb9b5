"""Which leave-one-out scores should fit `prototype`'s temperature? Pooled test ECE of each.

On development episodes (seed 0: `way` classes, `shot` support and 10 test images each, every
embedding from the feature cache), the temperature is fitted on plain leave-one-out scores
(:meth:`Prototype.held_out_logits`) and on the ones calibration uses (:meth:`Prototype.held_out`:
the own class scored against the full k-example norm), then the test images' probabilities are
pooled over episodes.

    python bench/prototype_calibration.py ../shared/data/omniglot --way 5 --shot 5 --episodes 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import fewtune
from fewtune.evaluate.episodes import sample_episodes
from fewtune.features.embedding import embed_files
from fewtune.model.calibration import expected_calibration_error, fit_temperature
from fewtune.numeric import softmax
from fewtune.strategies.prototype import Prototype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=200)
    args = parser.parse_args()
    dataset = fewtune.load_dataset(args.data)
    embedded = embed_files(fewtune.create_backbone(), dataset.paths, cache=True)
    features, labels = embedded.features, np.array(dataset.labels)[embedded.kept]
    assert len(embedded.kept) == len(dataset.paths), "every image must embed"
    pooled: dict[str, list[np.ndarray]] = {"T = 1": [], "plain leave-one-out": [], "held_out()": []}
    truth = []
    for episode in sample_episodes(dataset.labels, args.way, args.shot, 10, args.episodes, 0):
        support, query = np.array(episode.support), np.array(episode.query)
        y_support = np.array([episode.classes.index(int(labels[i])) for i in support])
        truth.append(np.array([episode.classes.index(int(labels[i])) for i in query]))
        prototype = Prototype()
        prototype.fit(features[support], y_support, args.way)
        test = prototype.logits(features[query])
        plain = prototype.held_out_logits(features[support], y_support, args.way)
        held = prototype.held_out(features[support], y_support, args.way)
        assert plain is not None and held is not None
        for name, temperature in (
            ("T = 1", 1.0),
            ("plain leave-one-out", fit_temperature(plain, y_support)[0]),
            ("held_out()", fit_temperature(held[0], held[1])[0]),
        ):
            pooled[name].append(softmax(test / temperature))
    answers = np.concatenate(truth)
    for name, probabilities in pooled.items():
        p = np.concatenate(probabilities)
        ece = 100 * expected_calibration_error(p, answers)
        confidence = 100 * float(p.max(1).mean())
        accuracy = 100 * float((p.argmax(1) == answers).mean())
        print(f"{name}: pooled ECE {ece:.2f}, mean confidence {confidence:.1f}, accuracy {accuracy:.1f}")


if __name__ == "__main__":
    main()
