"""Classification metrics for ERC (confidence intervals: `erc_llm.evaluation.bootstrap`).

All scores are fractions in [0, 1]; reports multiply by 100. F1 follows scikit-learn's conventions with an
explicit label list and ``zero_division=0``: a label that is neither in the gold nor predicted gets F1 0 and
still counts in the macro average; the weighted average weights each label by its gold support.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["METRIC_NAMES", "compute_metrics", "previous_label_repeat_rate"]

METRIC_NAMES: tuple[str, ...] = ("weighted_f1", "macro_f1", "accuracy")


def _validate_labels(labels: Sequence[str]) -> list[str]:
    """Return ``labels`` as a list after checking it is non-empty, string-only and duplicate-free."""
    label_list = list(labels)
    if not label_list:
        raise ValueError("labels must not be empty")
    for position, label in enumerate(label_list):
        if not isinstance(label, str):
            raise TypeError(f"labels[{position}] = {label!r} is not a string")
    seen: set[str] = set()
    for label in label_list:
        if label in seen:
            raise ValueError(f"label {label!r} appears more than once in labels {label_list}")
        seen.add(label)
    return label_list


def _encode(values: Sequence[str], label_to_code: dict[str, int], role: str) -> np.ndarray:
    """Map label strings to integer codes, raising ValueError naming the first unknown value and its index."""
    codes = np.empty(len(values), dtype=np.int64)
    for position, value in enumerate(values):
        code = label_to_code.get(value) if isinstance(value, str) else None
        if code is None:
            raise ValueError(f"{role}[{position}] = {value!r} is not one of the labels {list(label_to_code)}")
        codes[position] = code
    return codes


def _encode_pair(
    gold: Sequence[str], pred: Sequence[str], labels: Sequence[str], pred_role: str = "pred"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validate inputs and return (gold codes, pred codes, label list)."""
    label_list = _validate_labels(labels)
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} items but {pred_role} has {len(pred)}; they must align")
    if len(gold) == 0:
        raise ValueError("cannot score an empty set of utterances")
    label_to_code = {label: code for code, label in enumerate(label_list)}
    return _encode(gold, label_to_code, "gold"), _encode(pred, label_to_code, pred_role), label_list


def _confusion_from_codes(gold_codes: np.ndarray, pred_codes: np.ndarray, n_labels: int) -> np.ndarray:
    """Confusion matrix (rows gold, columns pred) from integer codes."""
    cells = gold_codes * n_labels + pred_codes
    return np.bincount(cells, minlength=n_labels * n_labels).reshape(n_labels, n_labels)


def _per_class_scores(confusions: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class for confusion matrices of shape (..., K, K)."""
    true_positives = np.diagonal(confusions, axis1=-2, axis2=-1).astype(np.float64)
    support = confusions.sum(axis=-1).astype(np.float64)
    predicted = confusions.sum(axis=-2).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_positives / predicted, 0.0)
        recall = np.where(support > 0, true_positives / support, 0.0)
        f1_denominator = support + predicted
        f1 = np.where(f1_denominator > 0, 2.0 * true_positives / f1_denominator, 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support, "tp": true_positives}


def _metric_from_confusions(confusions: np.ndarray, metric: str) -> np.ndarray:
    """Score confusion matrices of shape (..., K, K) with one of METRIC_NAMES."""
    scores = _per_class_scores(confusions)
    total = scores["support"].sum(axis=-1)
    if metric == "accuracy":
        return scores["tp"].sum(axis=-1) / total
    if metric == "macro_f1":
        return scores["f1"].mean(axis=-1)
    if metric == "weighted_f1":
        return (scores["f1"] * scores["support"]).sum(axis=-1) / total
    raise ValueError(f"unknown metric {metric!r}; choose one of {list(METRIC_NAMES)}")


def _check_metric(metric: str) -> None:
    """Raise ValueError unless ``metric`` is one of METRIC_NAMES."""
    if metric not in METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r}; choose one of {list(METRIC_NAMES)}")


def compute_metrics(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Score predictions against gold labels over a fixed label list.

    Returns ``weighted_f1`` (the headline ERC number), ``macro_f1``, ``accuracy``, ``per_class``
    (``{label: {precision, recall, f1, support}}``), ``confusion`` (rows gold, columns pred, both in
    ``labels`` order), ``n`` and ``labels``. Raises ValueError on a length mismatch, an empty input, or a
    gold/pred value outside ``labels`` (the message names the value and its position).
    """
    gold_codes, pred_codes, label_list = _encode_pair(gold, pred, labels)
    confusion = _confusion_from_codes(gold_codes, pred_codes, len(label_list))
    scores = _per_class_scores(confusion)
    per_class = {
        label: {
            "precision": float(scores["precision"][code]),
            "recall": float(scores["recall"][code]),
            "f1": float(scores["f1"][code]),
            "support": int(scores["support"][code]),
        }
        for code, label in enumerate(label_list)
    }
    return {
        "weighted_f1": float(_metric_from_confusions(confusion, "weighted_f1")),
        "macro_f1": float(_metric_from_confusions(confusion, "macro_f1")),
        "accuracy": float(_metric_from_confusions(confusion, "accuracy")),
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "n": len(gold_codes),
        "labels": label_list,
    }


def previous_label_repeat_rate(dialogues: Iterable[Sequence[str]]) -> float:
    """Share of lines, after each dialogue's first, whose label equals the previous line's label.

    ``dialogues`` holds each dialogue's labels in line order (gold or predicted). A labeller that conditions on its
    own earlier labels shows it as a rate above the gold one. Raises ValueError when no dialogue has two lines.
    """
    pairs = repeats = 0
    for labels in dialogues:
        pairs += max(len(labels) - 1, 0)
        repeats += sum(a == b for a, b in zip(labels, labels[1:]))
    if pairs == 0:
        raise ValueError("no dialogue has two lines: the repeat rate is undefined")
    return repeats / pairs
