"""Dev-tuned label bias: per-label log-probability offsets that maximise dev weighted-F1.

A fine-tuned small model's label probabilities are skewed by the training class mix (or by class weighting the
other way). `fit_label_bias` searches offsets b (coordinate ascent on a grid, a few sweeps) so that
argmax_label(log p + b) maximises the dev metric; `HFLabelScorer(label_bias=b)` then applies them when labelling
test data. Only dev predictions are used, never test labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from erc_llm.evaluation.metrics import compute_metrics
from erc_llm.evaluation.rundir import PredictionRecord

GRID = np.round(np.arange(-3.0, 3.01, 0.25), 2)


def _metric(logp: np.ndarray, bias: np.ndarray, gold: list[str], labels: list[str], metric: str) -> float:
    """Dev metric of argmax(logp + bias)."""
    pred = [labels[i] for i in np.argmax(logp + bias, axis=1)]
    return compute_metrics(gold, pred, labels)[metric]


def fit_label_bias(records: Sequence[PredictionRecord], labels: Sequence[str], metric: str = "weighted_f1",
                   sweeps: int = 3) -> tuple[dict[str, float], float, float]:
    """(bias per label, dev metric before, dev metric after) from dev records that carry scores and gold."""
    labels = list(labels)
    rows = [r for r in records if r.gold is not None and r.scores]
    if not rows:
        raise ValueError("label bias needs dev predictions with scores and gold labels")
    logp = np.log(np.clip(np.array([[r.scores[label] for label in labels] for r in rows]), 1e-12, 1.0))
    gold = [r.gold for r in rows]
    bias = np.zeros(len(labels))
    before = best = _metric(logp, bias, gold, labels, metric)
    for _ in range(sweeps):
        improved = False
        for j in range(1, len(labels)):  # label 0's offset stays 0 (only differences matter)
            for value in GRID:
                trial = bias.copy()
                trial[j] = value
                score = _metric(logp, trial, gold, labels, metric)
                if score > best + 1e-9:
                    best, bias, improved = score, trial, True
        if not improved:
            break
    return {label: float(b) for label, b in zip(labels, bias)}, before, best
