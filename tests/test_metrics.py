"""adadf.metrics.auroc against the definition, written as a plain double loop."""
from __future__ import annotations

import math
import random

import pytest

from adadf.metrics import auroc


def auroc_loop(scores, positives):
    """P(score of a positive > score of a negative), ties 1/2, over every pair: in percent."""
    pos = [s for s, p in zip(scores, positives) if p]
    neg = [s for s, p in zip(scores, positives) if not p]
    total = 0.0
    for a in pos:
        for b in neg:
            total += 1.0 if a > b else 0.5 if a == b else 0.0
    return 100.0 * total / (len(pos) * len(neg))


def test_hand_made_case_with_ties():
    # flipped labels (1) mostly score high; ties across and within the classes.
    scores = [0.9, 0.8, 0.8, 0.5, 0.5, 0.5, 0.3, 0.2, 0.2, 0.1]
    flipped = [1, 1, 0, 1, 0, 0, 0, 1, 0, 0]
    # By hand: positives 0.9 (beats 6 negatives), 0.8 (5 + tie 0.8: 5.5), 0.5 (3 + 2 ties: 4),
    # 0.2 (1 + tie 0.2: 1.5) -> 17 of 4 * 6 = 24 pairs.
    assert auroc(scores, flipped) == pytest.approx(100 * 17 / 24)
    assert auroc(scores, flipped) == pytest.approx(auroc_loop(scores, flipped))


def test_random_cases_equal_the_loop():
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(2, 60)
        scores = [rng.choice([0.0, 0.25, 0.5, 1.0]) if rng.random() < 0.5 else rng.random() for _ in range(n)]
        positives = [rng.random() < 0.3 for _ in range(n)]
        if all(positives) or not any(positives):
            positives[0] = not positives[0]
        assert auroc(scores, positives) == pytest.approx(auroc_loop(scores, positives))


def test_chance_perfect_and_reversed():
    assert auroc([1, 1, 1, 1], [1, 0, 1, 0]) == 50.0  # one score for all: chance
    assert auroc([4, 3, 2, 1], [1, 1, 0, 0]) == 100.0
    assert auroc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0


def test_nan_scores_are_left_out_and_one_class_is_nan():
    assert auroc([3, float("nan"), 1], [1, 1, 0]) == 100.0
    assert math.isnan(auroc([1, 2], [1, 1]))
    with pytest.raises(ValueError):
        auroc([1, 2, 3], [1, 0])
