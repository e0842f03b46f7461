"""Classification metrics for ERC and fast bootstrap confidence intervals.

All scores are fractions in [0, 1]; reports multiply by 100. F1 follows scikit-learn's conventions with an
explicit label list and ``zero_division=0``: a label that is neither in the gold nor predicted gets F1 0 and
still counts in the macro average; the weighted average weights each label by its gold support.

The bootstrap resamples utterances with replacement. All resamples of a chunk are scored at once: the
(gold, pred) pair of every utterance is encoded as one integer, and a single ``np.bincount`` over the resampled
indices (offset per resample) yields one confusion matrix per resample.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = [
    "METRIC_NAMES",
    "bootstrap_ci",
    "bootstrap_metric_samples",
    "compute_metrics",
    "iter_resample_indices",
    "paired_bootstrap",
]

METRIC_NAMES: tuple[str, ...] = ("weighted_f1", "macro_f1", "accuracy")

# Upper bound on resampled indices held in memory at once (int64: 8 bytes each, so about 32 MB).
_MAX_INDICES_PER_CHUNK = 4_000_000


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


def iter_resample_indices(n_items: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Yield bootstrap index arrays of shape (chunk, n_items), ``n_resamples`` rows in total, reproducibly.

    The same (n_items, n_resamples, seed) always gives the same resamples, which is what makes the paired
    bootstrap paired and lets separate calls share resamples.
    """
    if n_items < 1:
        raise ValueError("cannot resample an empty set of utterances")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    chunk_size = max(1, _MAX_INDICES_PER_CHUNK // n_items)
    remaining = n_resamples
    while remaining > 0:
        rows = min(chunk_size, remaining)
        yield rng.integers(0, n_items, size=(rows, n_items))
        remaining -= rows


def _resampled_metric(pair_codes: np.ndarray, indices: np.ndarray, n_labels: int, metric: str) -> np.ndarray:
    """Metric value for each row of ``indices`` given per-utterance codes ``gold * K + pred``."""
    n_rows = indices.shape[0]
    cells_per_matrix = n_labels * n_labels
    offsets = (np.arange(n_rows, dtype=np.int64) * cells_per_matrix)[:, None]
    cells = pair_codes[indices] + offsets
    counts = np.bincount(cells.ravel(), minlength=n_rows * cells_per_matrix)
    return _metric_from_confusions(counts.reshape(n_rows, n_labels, n_labels), metric)


def _bootstrap_samples_for_codes(
    gold_codes: np.ndarray,
    pred_code_arrays: Sequence[np.ndarray],
    n_labels: int,
    metric: str,
    n_resamples: int,
    seed: int,
) -> list[np.ndarray]:
    """Per-resample metric values for several prediction arrays scored on the same resamples."""
    pair_code_arrays = [gold_codes * n_labels + pred_codes for pred_codes in pred_code_arrays]
    collected: list[list[np.ndarray]] = [[] for _ in pair_code_arrays]
    for indices in iter_resample_indices(len(gold_codes), n_resamples, seed):
        for system_position, pair_codes in enumerate(pair_code_arrays):
            collected[system_position].append(_resampled_metric(pair_codes, indices, n_labels, metric))
    return [np.concatenate(chunks) for chunks in collected]


def bootstrap_metric_samples(
    gold: Sequence[str],
    pred: Sequence[str],
    labels: Sequence[str],
    metric: str = "weighted_f1",
    n_resamples: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """Return the metric on each of ``n_resamples`` bootstrap resamples (array of shape (n_resamples,))."""
    _check_metric(metric)
    gold_codes, pred_codes, label_list = _encode_pair(gold, pred, labels)
    return _bootstrap_samples_for_codes(gold_codes, [pred_codes], len(label_list), metric, n_resamples, seed)[
        0
    ]


def bootstrap_ci(
    gold: Sequence[str],
    pred: Sequence[str],
    labels: Sequence[str],
    metric: str = "weighted_f1",
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Percentile bootstrap confidence interval: ``{estimate, low, high}``.

    ``estimate`` is the metric on the full data; ``low``/``high`` are the ``alpha/2`` and ``1 - alpha/2``
    quantiles of the metric over resamples of utterances (so alpha=0.05 gives a 95% interval).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be strictly between 0 and 1, got {alpha}")
    _check_metric(metric)
    gold_codes, pred_codes, label_list = _encode_pair(gold, pred, labels)
    n_labels = len(label_list)
    estimate = float(_metric_from_confusions(_confusion_from_codes(gold_codes, pred_codes, n_labels), metric))
    samples = _bootstrap_samples_for_codes(gold_codes, [pred_codes], n_labels, metric, n_resamples, seed)[0]
    low, high = np.quantile(samples, [alpha / 2.0, 1.0 - alpha / 2.0])
    return {"estimate": estimate, "low": float(low), "high": float(high)}


def paired_bootstrap(
    gold: Sequence[str],
    pred_a: Sequence[str],
    pred_b: Sequence[str],
    labels: Sequence[str],
    metric: str = "weighted_f1",
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Paired bootstrap of ``metric(b) - metric(a)`` with both systems scored on the same resamples.

    Returns ``a`` and ``b`` (full-data scores), ``delta = b - a``, ``low``/``high`` (percentile interval of
    the resampled deltas, 95% for alpha=0.05) and ``p_value``: the share of resamples in which ``delta <= 0``.
    That p-value is ONE-SIDED, testing "b is better than a"; identical systems give delta 0 and p_value 1.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be strictly between 0 and 1, got {alpha}")
    _check_metric(metric)
    gold_codes, codes_a, label_list = _encode_pair(gold, pred_a, labels, pred_role="pred_a")
    _, codes_b, _ = _encode_pair(gold, pred_b, labels, pred_role="pred_b")
    n_labels = len(label_list)
    score_a = float(_metric_from_confusions(_confusion_from_codes(gold_codes, codes_a, n_labels), metric))
    score_b = float(_metric_from_confusions(_confusion_from_codes(gold_codes, codes_b, n_labels), metric))
    samples_a, samples_b = _bootstrap_samples_for_codes(
        gold_codes, [codes_a, codes_b], n_labels, metric, n_resamples, seed
    )
    deltas = samples_b - samples_a
    low, high = np.quantile(deltas, [alpha / 2.0, 1.0 - alpha / 2.0])
    return {
        "a": score_a,
        "b": score_b,
        "delta": score_b - score_a,
        "low": float(low),
        "high": float(high),
        "p_value": float(np.mean(deltas <= 0.0)),
    }
