"""Detection metrics on plain arrays (no torch, no config): how well a per-sample score finds a
set of positives, e.g. low attention finding flipped labels."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """Area under the ROC curve in percent (50 = chance, 100 = every positive scores above every
    negative): the probability that a random positive scores higher than a random negative, ties
    counting one half (Mann-Whitney U from average ranks). NaN scores are left out; NaN when
    either class is empty."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positives, dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and positives {y.shape} differ in shape")
    keep = ~np.isnan(s)
    s, y = s[keep], y[keep]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = pd.Series(s).rank(method="average").to_numpy()  # 1-based, ties share their average rank
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return 100.0 * u / (n_pos * n_neg)
