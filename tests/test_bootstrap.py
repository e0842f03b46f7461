"""The dialogue (cluster) bootstrap of erc_llm.evaluation.bootstrap: exact per resample, wider than the utterance
bootstrap when predictions are correlated within dialogues, paired, reproducible."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.metrics import f1_score

from erc_llm.evaluation import bootstrap_ci, bootstrap_metric_samples, ci_description, paired_bootstrap
from erc_llm.evaluation.bootstrap import iter_resample_indices

LABELS = ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"]


def dialogues_of(n_dialogues: int, size: int, seed: int) -> tuple[list[str], list[str]]:
    """(gold labels, dialogue id per utterance) for n_dialogues dialogues of `size` utterances each."""
    rng = np.random.default_rng(seed)
    gold = [str(label) for label in rng.choice(LABELS, size=n_dialogues * size, p=[.45, .2, .1, .1, .08, .04, .03])]
    groups = [f"d{i // size}" for i in range(n_dialogues * size)]
    return gold, groups


def wrong(label: str) -> str:
    """A label other than `label`."""
    return LABELS[(LABELS.index(label) + 1) % len(LABELS)]


def correlated_predictions(gold: list[str], groups: list[str], seed: int, good_share: float = 0.6) -> list[str]:
    """A system that labels a whole dialogue right or a whole dialogue wrong (maximal within-dialogue correlation)."""
    rng = np.random.default_rng(seed)
    good = {g: rng.random() < good_share for g in dict.fromkeys(groups)}
    return [label if good[g] else wrong(label) for label, g in zip(gold, groups)]


def independent_predictions(gold: list[str], seed: int, accuracy: float = 0.6) -> list[str]:
    """A system whose errors are independent across utterances."""
    rng = np.random.default_rng(seed)
    return [label if rng.random() < accuracy else wrong(label) for label in gold]


def width(interval: dict[str, float]) -> float:
    return interval["high"] - interval["low"]


def test_each_dialogue_resample_is_scored_exactly():
    gold, groups = dialogues_of(12, 7, seed=0)
    gold_rows = np.array(gold).reshape(12, 7)
    pred = independent_predictions(gold, seed=1)
    pred_rows = np.array(pred).reshape(12, 7)
    samples = bootstrap_metric_samples(gold, pred, LABELS, "weighted_f1", n_resamples=6, seed=4, groups=groups)
    drawn = np.concatenate(list(iter_resample_indices(12, 6, seed=4)))  # dialogues drawn per resample
    for value, dialogues in zip(samples, drawn):
        expected = f1_score(gold_rows[dialogues].ravel(), pred_rows[dialogues].ravel(), labels=LABELS,
                            average="weighted", zero_division=0)
        assert value == pytest.approx(expected)


def test_dialogue_bootstrap_is_wider_when_dialogues_are_correlated():
    gold, groups = dialogues_of(60, 20, seed=2)
    pred = correlated_predictions(gold, groups, seed=3)
    by_utterance = bootstrap_ci(gold, pred, LABELS, "accuracy", n_resamples=1000, seed=0)
    by_dialogue = bootstrap_ci(gold, pred, LABELS, "accuracy", n_resamples=1000, seed=0, groups=groups)
    assert by_dialogue["estimate"] == by_utterance["estimate"]
    assert by_dialogue["low"] <= by_dialogue["estimate"] <= by_dialogue["high"]
    # 60 independent units instead of 1,200: about sqrt(20) = 4.5 times wider.
    assert width(by_dialogue) > 3 * width(by_utterance)
    # Without within-dialogue correlation both bootstraps agree.
    pred = independent_predictions(gold, seed=5)
    ratio = width(bootstrap_ci(gold, pred, LABELS, n_resamples=1000, groups=groups)) / width(
        bootstrap_ci(gold, pred, LABELS, n_resamples=1000))
    assert 0.7 < ratio < 1.4


def test_paired_dialogue_bootstrap():
    gold, groups = dialogues_of(50, 16, seed=6)
    base = independent_predictions(gold, seed=7)
    same = paired_bootstrap(gold, base, list(base), LABELS, n_resamples=300, groups=groups)
    assert same["delta"] == same["low"] == same["high"] == 0.0 and same["p_value"] == 1.0
    better = independent_predictions(gold, seed=8, accuracy=0.85)
    clear = paired_bootstrap(gold, base, better, LABELS, n_resamples=500, groups=groups)
    assert clear["delta"] == pytest.approx(clear["b"] - clear["a"]) and clear["low"] > 0 and clear["p_value"] == 0.0
    # A system that differs from the base by whole dialogues: the paired dialogue interval is the honest, wider one.
    fixed = {g for i, g in enumerate(dict.fromkeys(groups)) if i % 3 == 0}
    patchy = [g_ if grp in fixed else p for g_, p, grp in zip(gold, base, groups)]
    by_dialogue = paired_bootstrap(gold, base, patchy, LABELS, n_resamples=1000, groups=groups)
    by_utterance = paired_bootstrap(gold, base, patchy, LABELS, n_resamples=1000)
    assert by_dialogue["delta"] == by_utterance["delta"] > 0
    assert width(by_dialogue) > 2 * width(by_utterance)


def test_seeded_and_reproducible():
    gold, groups = dialogues_of(30, 10, seed=9)
    pred = correlated_predictions(gold, groups, seed=10)
    first = bootstrap_metric_samples(gold, pred, LABELS, n_resamples=200, seed=11, groups=groups)
    again = bootstrap_metric_samples(gold, pred, LABELS, n_resamples=200, seed=11, groups=groups)
    other = bootstrap_metric_samples(gold, pred, LABELS, n_resamples=200, seed=12, groups=groups)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert paired_bootstrap(gold, pred, gold, LABELS, seed=3, groups=groups) == paired_bootstrap(
        gold, pred, gold, LABELS, seed=3, groups=groups)
    with pytest.raises(ValueError, match="groups has 3 items"):
        bootstrap_ci(gold, pred, LABELS, groups=groups[:3])
    assert ci_description(1000) == "95% CI, dialogue bootstrap, 1000 resamples"


def test_dialogue_bootstrap_is_fast_on_a_meld_test_sized_split():
    gold, groups = dialogues_of(280, 9, seed=13)  # MELD test: 2,610 utterances in 280 dialogues
    pred_a, pred_b = independent_predictions(gold, 14), independent_predictions(gold, 15, 0.65)
    started = time.perf_counter()
    bootstrap_ci(gold, pred_a, LABELS, n_resamples=1000, groups=groups)
    paired_bootstrap(gold, pred_a, pred_b, LABELS, n_resamples=1000, groups=groups)
    assert time.perf_counter() - started < 2.0
