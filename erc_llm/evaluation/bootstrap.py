"""Bootstrap confidence intervals for ERC metrics: the project's one resampling implementation.

Predictions within a dialogue are not independent (they share the transcript in their prompts, and with
predicted emotion history one answer feeds the next prompt), so the project's intervals resample **whole
dialogues** (a cluster bootstrap): pass ``groups``, one dialogue id per utterance. A resample draws as many
dialogues as there are, with replacement, and scores every utterance of each drawn dialogue (a dialogue drawn
twice counts twice). ``groups=None`` makes every utterance its own cluster: the plain utterance bootstrap, which
understates the uncertainty when predictions are correlated within dialogues (kept for comparison).

Paired differences (``paired_bootstrap``) score both systems on the same resampled dialogues. The same
(clusters, n_resamples, seed) always gives the same resamples.

All resamples of a chunk are scored at once: each cluster's (gold, pred) pairs are counted into a flattened
confusion matrix C (clusters x K*K); a resample is a vector w of how often each cluster was drawn, and its
confusion matrix is w @ C, so a chunk of resamples is one matrix product.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

import numpy as np

from erc_llm.evaluation.metrics import _check_metric, _confusion_from_codes, _encode_pair, _metric_from_confusions

__all__ = [
    "DIALOGUE",
    "UTTERANCE",
    "bootstrap_ci",
    "bootstrap_metric_samples",
    "ci_description",
    "iter_resample_indices",
    "paired_bootstrap",
]

DIALOGUE = "dialogue"
UTTERANCE = "utterance"

# Upper bound on resampled indices held in memory at once (int64: 8 bytes each, so about 32 MB).
_MAX_INDICES_PER_CHUNK = 4_000_000


def ci_description(n_resamples: int, unit: str = DIALOGUE, level: int = 95) -> str:
    """How reports name an interval, e.g. '95% CI, dialogue bootstrap, 1000 resamples'."""
    return f"{level}% CI, {unit} bootstrap, {n_resamples} resamples"


def iter_resample_indices(n_items: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Yield bootstrap index arrays of shape (chunk, n_items), ``n_resamples`` rows in total, reproducibly.

    Items are the resampled units (dialogues, or utterances without groups). The same (n_items, n_resamples,
    seed) always gives the same resamples, which is what makes the paired bootstrap paired.
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


def _cluster_codes(groups: Sequence[Hashable] | None, n_items: int) -> tuple[np.ndarray, int]:
    """(cluster index per utterance, number of clusters); clusters numbered by first appearance."""
    if groups is None:
        return np.arange(n_items, dtype=np.int64), n_items
    if len(groups) != n_items:
        raise ValueError(f"groups has {len(groups)} items but there are {n_items} utterances; they must align")
    numbering: dict[Hashable, int] = {}
    codes = np.fromiter((numbering.setdefault(g, len(numbering)) for g in groups), dtype=np.int64, count=n_items)
    return codes, len(numbering)


def _bootstrap_samples_for_codes(
    gold_codes: np.ndarray,
    pred_code_arrays: Sequence[np.ndarray],
    n_labels: int,
    metric: str,
    n_resamples: int,
    seed: int,
    groups: Sequence[Hashable] | None = None,
) -> list[np.ndarray]:
    """Per-resample metric values for several prediction arrays scored on the same resamples of clusters."""
    clusters, n_clusters = _cluster_codes(groups, len(gold_codes))
    cells = n_labels * n_labels
    per_cluster = [  # (clusters, K*K) confusion counts of each system
        np.bincount(clusters * cells + gold_codes * n_labels + pred_codes, minlength=n_clusters * cells)
        .reshape(n_clusters, cells).astype(np.float64)
        for pred_codes in pred_code_arrays
    ]
    collected: list[list[np.ndarray]] = [[] for _ in per_cluster]
    for indices in iter_resample_indices(n_clusters, n_resamples, seed):
        rows = indices.shape[0]
        offsets = (np.arange(rows, dtype=np.int64) * n_clusters)[:, None]
        draws = np.bincount((indices + offsets).ravel(), minlength=rows * n_clusters).reshape(rows, n_clusters)
        draws = draws.astype(np.float64)
        for position, confusions in enumerate(per_cluster):
            resampled = (draws @ confusions).reshape(rows, n_labels, n_labels)
            collected[position].append(_metric_from_confusions(resampled, metric))
    return [np.concatenate(chunks) for chunks in collected]


def _check_alpha(alpha: float) -> None:
    """Raise ValueError unless 0 < alpha < 1."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be strictly between 0 and 1, got {alpha}")


def bootstrap_metric_samples(
    gold: Sequence[str],
    pred: Sequence[str],
    labels: Sequence[str],
    metric: str = "weighted_f1",
    n_resamples: int = 1000,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
) -> np.ndarray:
    """The metric on each of ``n_resamples`` bootstrap resamples (shape (n_resamples,)); dialogues are resampled
    when ``groups`` gives each utterance's dialogue id, utterances otherwise."""
    _check_metric(metric)
    gold_codes, pred_codes, label_list = _encode_pair(gold, pred, labels)
    return _bootstrap_samples_for_codes(gold_codes, [pred_codes], len(label_list), metric, n_resamples, seed,
                                        groups)[0]


def bootstrap_ci(
    gold: Sequence[str],
    pred: Sequence[str],
    labels: Sequence[str],
    metric: str = "weighted_f1",
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: Sequence[Hashable] | None = None,
) -> dict[str, float]:
    """Percentile bootstrap confidence interval: ``{estimate, low, high}``.

    ``estimate`` is the metric on the full data; ``low``/``high`` are the ``alpha/2`` and ``1 - alpha/2``
    quantiles of the metric over resamples (alpha=0.05 gives a 95% interval) of whole dialogues when ``groups``
    holds each utterance's dialogue id (what every report uses), of single utterances when it is None.
    """
    _check_alpha(alpha)
    _check_metric(metric)
    gold_codes, pred_codes, label_list = _encode_pair(gold, pred, labels)
    n_labels = len(label_list)
    estimate = float(_metric_from_confusions(_confusion_from_codes(gold_codes, pred_codes, n_labels), metric))
    samples = _bootstrap_samples_for_codes(gold_codes, [pred_codes], n_labels, metric, n_resamples, seed, groups)[0]
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
    groups: Sequence[Hashable] | None = None,
) -> dict[str, float]:
    """Paired bootstrap of ``metric(b) - metric(a)`` with both systems scored on the same resamples (of whole
    dialogues when ``groups`` gives each utterance's dialogue id, of utterances when it is None).

    Returns ``a`` and ``b`` (full-data scores), ``delta = b - a``, ``low``/``high`` (percentile interval of
    the resampled deltas, 95% for alpha=0.05) and ``p_value``: the share of resamples in which ``delta <= 0``.
    That p-value is ONE-SIDED, testing "b is better than a"; identical systems give delta 0 and p_value 1.
    """
    _check_alpha(alpha)
    _check_metric(metric)
    gold_codes, codes_a, label_list = _encode_pair(gold, pred_a, labels, pred_role="pred_a")
    _, codes_b, _ = _encode_pair(gold, pred_b, labels, pred_role="pred_b")
    n_labels = len(label_list)
    score_a = float(_metric_from_confusions(_confusion_from_codes(gold_codes, codes_a, n_labels), metric))
    score_b = float(_metric_from_confusions(_confusion_from_codes(gold_codes, codes_b, n_labels), metric))
    samples_a, samples_b = _bootstrap_samples_for_codes(
        gold_codes, [codes_a, codes_b], n_labels, metric, n_resamples, seed, groups
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
