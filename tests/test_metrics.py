"""Behavioural tests for erc_llm.evaluation.metrics, run directories and atomic writes."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from erc_llm.evaluation import (
    PredictionRecord,
    RunFormatError,
    bootstrap_ci,
    bootstrap_metric_samples,
    compute_metrics,
    evaluate_run,
    paired_bootstrap,
    read_metrics,
    read_predictions,
    write_metrics,
    write_predictions,
)
from erc_llm.evaluation.bootstrap import iter_resample_indices
from erc_llm.evaluation.metrics import previous_label_repeat_rate
from erc_llm.io import atomic_open, atomic_write_json, atomic_write_text

MELD_LABELS = ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"]
MELD_LABEL_SHARES = [0.48, 0.16, 0.11, 0.13, 0.08, 0.03, 0.01]


def noisy_predictions(gold: list[str], accuracy: float, seed: int) -> list[str]:
    """Predictions that copy gold with probability ``accuracy`` and are a random label otherwise."""
    rng = np.random.default_rng(seed)
    return [label if rng.random() < accuracy else str(rng.choice(MELD_LABELS)) for label in gold]


def meld_like_gold(n_utterances: int, seed: int) -> list[str]:
    """Gold labels with MELD-like class imbalance."""
    rng = np.random.default_rng(seed)
    return [str(label) for label in rng.choice(MELD_LABELS, size=n_utterances, p=MELD_LABEL_SHARES)]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_metrics_match_sklearn_on_random_data(seed: int) -> None:
    gold = meld_like_gold(300, seed)
    pred = noisy_predictions(gold, 0.5, seed + 100)
    metrics = compute_metrics(gold, pred, MELD_LABELS)

    assert metrics["weighted_f1"] == pytest.approx(
        f1_score(gold, pred, labels=MELD_LABELS, average="weighted", zero_division=0)
    )
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(gold, pred, labels=MELD_LABELS, average="macro", zero_division=0)
    )
    assert metrics["accuracy"] == pytest.approx(accuracy_score(gold, pred))
    precision, recall, f1, support = precision_recall_fscore_support(
        gold, pred, labels=MELD_LABELS, zero_division=0
    )
    for position, label in enumerate(MELD_LABELS):
        assert metrics["per_class"][label]["precision"] == pytest.approx(precision[position])
        assert metrics["per_class"][label]["recall"] == pytest.approx(recall[position])
        assert metrics["per_class"][label]["f1"] == pytest.approx(f1[position])
        assert metrics["per_class"][label]["support"] == support[position]
    assert metrics["confusion"] == confusion_matrix(gold, pred, labels=MELD_LABELS).tolist()
    assert metrics["n"] == 300
    assert metrics["labels"] == MELD_LABELS


def test_metrics_match_sklearn_when_a_label_never_occurs() -> None:
    gold = ["neutral", "joy", "neutral", "anger", "joy", "neutral"]
    pred = ["neutral", "neutral", "joy", "anger", "joy", "fear"]
    metrics = compute_metrics(gold, pred, MELD_LABELS)
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(gold, pred, labels=MELD_LABELS, average="macro", zero_division=0)
    )
    assert metrics["per_class"]["surprise"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_hand_computed_example() -> None:
    # gold a a a b b c ; pred a a b b c c
    # a: tp 2, predicted 2, support 3 -> P 1, R 2/3, F1 0.8
    # b: tp 1, predicted 2, support 2 -> P 1/2, R 1/2, F1 0.5
    # c: tp 1, predicted 2, support 1 -> P 1/2, R 1, F1 2/3
    metrics = compute_metrics(list("aaabbc"), list("aabbcc"), ["a", "b", "c"])
    assert metrics["per_class"]["a"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}
    )
    assert metrics["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert metrics["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert metrics["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert metrics["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_errors_name_offending_value_and_position() -> None:
    with pytest.raises(ValueError, match=r"gold has 3 items but pred has 2"):
        compute_metrics(["joy", "joy", "fear"], ["joy", "joy"], MELD_LABELS)
    with pytest.raises(ValueError, match=r"pred\[2\] = 'happy'"):
        compute_metrics(["joy", "joy", "fear"], ["joy", "joy", "happy"], MELD_LABELS)
    with pytest.raises(ValueError, match=r"gold\[1\] = 'Joy'"):
        compute_metrics(["joy", "Joy"], ["joy", "joy"], MELD_LABELS)
    with pytest.raises(ValueError, match="empty"):
        compute_metrics([], [], MELD_LABELS)
    with pytest.raises(ValueError, match="more than once"):
        compute_metrics(["joy"], ["joy"], ["joy", "joy"])
    with pytest.raises(ValueError, match=r"pred_b\[0\] = 'happy'"):
        paired_bootstrap(["joy"], ["joy"], ["happy"], MELD_LABELS, n_resamples=10)
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci(["joy"], ["joy"], MELD_LABELS, metric="f1_micro")


def test_vectorised_resamples_equal_sklearn_on_each_resample() -> None:
    gold = meld_like_gold(200, 7)
    pred = noisy_predictions(gold, 0.6, 8)
    indices = np.concatenate(list(iter_resample_indices(len(gold), 5, seed=3)))
    for metric in ("weighted_f1", "macro_f1", "accuracy"):
        samples = bootstrap_metric_samples(gold, pred, MELD_LABELS, metric=metric, n_resamples=5, seed=3)
        for resample, row in enumerate(indices):
            resampled_gold = [gold[i] for i in row]
            resampled_pred = [pred[i] for i in row]
            if metric == "accuracy":
                expected = accuracy_score(resampled_gold, resampled_pred)
            else:
                average = metric.split("_")[0]
                expected = f1_score(
                    resampled_gold, resampled_pred, labels=MELD_LABELS, average=average, zero_division=0
                )
            assert samples[resample] == pytest.approx(expected), (metric, resample)


def test_resampling_is_reproducible_and_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    gold = meld_like_gold(100, 0)
    pred = noisy_predictions(gold, 0.5, 1)
    first = bootstrap_metric_samples(gold, pred, MELD_LABELS, n_resamples=50, seed=11)
    second = bootstrap_metric_samples(gold, pred, MELD_LABELS, n_resamples=50, seed=11)
    np.testing.assert_array_equal(first, second)

    monkeypatch.setattr("erc_llm.evaluation.bootstrap._MAX_INDICES_PER_CHUNK", 700)  # 7 resamples per chunk
    chunks = list(iter_resample_indices(100, 50, seed=11))
    assert [chunk.shape for chunk in chunks] == [(7, 100)] * 7 + [(1, 100)]
    chunked = bootstrap_metric_samples(gold, pred, MELD_LABELS, n_resamples=50, seed=11)
    assert chunked.shape == (50,)
    interval = bootstrap_ci(gold, pred, MELD_LABELS, n_resamples=50, seed=11)
    assert interval["low"] <= interval["estimate"] <= interval["high"]


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_data() -> None:
    widths = []
    for n_utterances in (100, 2500):
        gold = meld_like_gold(n_utterances, 5)
        pred = noisy_predictions(gold, 0.6, 6)
        interval = bootstrap_ci(gold, pred, MELD_LABELS, n_resamples=500, seed=0)
        assert interval["estimate"] == pytest.approx(compute_metrics(gold, pred, MELD_LABELS)["weighted_f1"])
        assert interval["low"] <= interval["estimate"] <= interval["high"]
        widths.append(interval["high"] - interval["low"])
    assert widths[1] < widths[0] / 2


def test_paired_bootstrap_of_identical_systems_has_zero_delta() -> None:
    gold = meld_like_gold(400, 1)
    pred = noisy_predictions(gold, 0.6, 2)
    result = paired_bootstrap(gold, pred, list(pred), MELD_LABELS, n_resamples=200)
    assert result["delta"] == 0.0
    assert result["low"] == 0.0 and result["high"] == 0.0
    assert result["a"] == result["b"]
    assert result["p_value"] == 1.0


def test_paired_bootstrap_detects_a_clearly_better_system() -> None:
    gold = meld_like_gold(1500, 3)
    weak = noisy_predictions(gold, 0.4, 4)
    strong = noisy_predictions(gold, 0.8, 5)
    result = paired_bootstrap(gold, weak, strong, MELD_LABELS, n_resamples=300)
    assert result["delta"] == pytest.approx(result["b"] - result["a"])
    assert result["low"] > 0
    assert result["p_value"] == 0.0


def test_bootstrap_is_fast_on_a_meld_test_sized_split() -> None:
    gold = meld_like_gold(2610, 9)
    pred_a = noisy_predictions(gold, 0.6, 10)
    pred_b = noisy_predictions(gold, 0.65, 11)
    started = time.perf_counter()
    bootstrap_ci(gold, pred_a, MELD_LABELS, n_resamples=1000)
    paired_bootstrap(gold, pred_a, pred_b, MELD_LABELS, n_resamples=1000)
    assert time.perf_counter() - started < 2.0


def make_records() -> list[PredictionRecord]:
    """A few prediction records covering every optional-field combination."""
    return [
        PredictionRecord(
            "d1", 0, "Ross", "Hi!", "joy", gold="joy", utterance_id="u1", scores={"joy": 0.9, "neutral": 0.1}
        ),
        PredictionRecord("d1", 1, "Rachel", "Oh — really? «quote» | pipe", "surprise", gold="neutral"),
        PredictionRecord("d2", 0, "Monica", "No gold here.", "anger"),
    ]


def test_predictions_round_trip(tmp_path: Path) -> None:
    records = make_records()
    path = write_predictions(tmp_path / "predictions.jsonl", records)
    assert read_predictions(path) == records
    assert read_predictions(tmp_path) == records
    first_line = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert list(first_line) == [
        "dialogue_id",
        "utterance_index",
        "utterance_id",
        "speaker",
        "text",
        "gold",
        "pred",
        "scores",
    ]
    assert PredictionRecord.from_dict(records[0].to_dict()) == records[0]
    fresh_run_dir = tmp_path / "runs" / "new_run"
    assert write_predictions(fresh_run_dir, records) == fresh_run_dir / "predictions.jsonl"
    assert read_predictions(fresh_run_dir) == records


def test_bad_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    path = write_predictions(tmp_path / "predictions.jsonl", make_records())
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([lines[0], lines[1], lines[2][:25]]) + "\n", encoding="utf-8")
    with pytest.raises(RunFormatError, match=r"predictions\.jsonl:3: invalid JSON"):
        read_predictions(path)

    missing_pred = json.loads(lines[1])
    del missing_pred["pred"]
    path.write_text(lines[0] + "\n" + json.dumps(missing_pred) + "\n", encoding="utf-8")
    with pytest.raises(RunFormatError, match=r"predictions\.jsonl:2: missing required field\(s\): pred"):
        read_predictions(path)

    wrong_index = json.loads(lines[0]) | {"utterance_index": "0"}
    path.write_text(json.dumps(wrong_index) + "\n", encoding="utf-8")
    with pytest.raises(RunFormatError, match=r":1: field 'utterance_index' must be an integer"):
        read_predictions(path)

    path.write_text(lines[0] + "\n" + lines[0] + "\n", encoding="utf-8")
    with pytest.raises(RunFormatError, match=r":2: .*already appeared on line 1"):
        read_predictions(path)


def test_atomic_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a.txt", "first")
    atomic_write_text(tmp_path / "a.txt", "second")
    atomic_write_json(tmp_path / "b.json", {"émotion": "joy"})
    write_predictions(tmp_path / "predictions.jsonl", make_records())
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "b.json", {"bad": object()})

    def failing_records():
        yield make_records()[0]
        raise RuntimeError("model crashed mid-run")

    with pytest.raises(RuntimeError):
        write_predictions(tmp_path / "predictions.jsonl", failing_records())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "predictions.jsonl"]
    assert (tmp_path / "a.txt").read_text() == "second"
    assert json.loads((tmp_path / "b.json").read_text(encoding="utf-8")) == {"émotion": "joy"}
    assert len(read_predictions(tmp_path)) == 3


def test_atomic_open_streams_text_and_passes_newline_through(tmp_path: Path) -> None:
    with atomic_open(tmp_path / "rows.csv", newline="") as handle:
        csv.writer(handle).writerow(["dialogue_id", "pred"])
        assert not (tmp_path / "rows.csv").exists()  # nothing visible until the block succeeds
    assert (tmp_path / "rows.csv").read_bytes() == b"dialogue_id,pred\r\n"
    with pytest.raises(ValueError, match="modes"):
        with atomic_open(tmp_path / "x.txt", "a"):
            pass


def test_evaluate_run_skips_missing_gold_and_metrics_round_trip(tmp_path: Path) -> None:
    write_predictions(tmp_path / "predictions.jsonl", make_records())
    metrics = evaluate_run(tmp_path, MELD_LABELS)
    assert metrics["n"] == 2
    assert metrics["n_predictions"] == 3
    assert metrics["n_without_gold"] == 1
    assert metrics["accuracy"] == pytest.approx(0.5)

    write_metrics(tmp_path, metrics, system="zero-shot", corpus="meld", split="test", command="erc-llm eval")
    stored = read_metrics(tmp_path)
    assert stored["schema"] == "erc_llm.metrics/1"
    assert (stored["system"], stored["corpus"], stored["split"]) == ("zero-shot", "meld", "test")
    assert stored["weighted_f1"] == pytest.approx(metrics["weighted_f1"])
    assert stored["extra"] == {"n_predictions": 3, "n_without_gold": 1}
    assert stored["created"].endswith("+00:00")


def test_evaluate_run_names_utterance_with_unknown_label(tmp_path: Path) -> None:
    write_predictions(tmp_path, [PredictionRecord("d9", 4, "Joey", "How you doin'?", "flirty", gold="joy")])
    with pytest.raises(ValueError, match=r"dialogue 'd9' utterance 4 has pred 'flirty'"):
        evaluate_run(tmp_path, MELD_LABELS)


def test_read_metrics_rejects_wrong_schema(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "metrics.json", {"schema": "something/2"})
    with pytest.raises(RunFormatError, match="schema"):
        read_metrics(tmp_path)
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        read_metrics(tmp_path / "nowhere")


def test_previous_label_repeat_rate_counts_within_dialogues_only() -> None:
    # pairs: (a,a) (a,b) | (b,b) ; the b->b across the dialogue boundary is not a pair, one-line dialogues add none
    assert previous_label_repeat_rate([["a", "a", "b"], ["b", "b"], ["c"]]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no dialogue has two lines"):
        previous_label_repeat_rate([["a"], []])
