"""The dev-fitted label bias is applied at test only when a cross-fit on dev by dialogue halves says it helps."""

from __future__ import annotations

import logging

import pytest

from erc_llm.evaluation.rundir import PredictionRecord
from erc_llm.labelling.bias import choose_label_bias, dialogue_halves, heldout_label_bias_gain

LABELS = ["neutral", "joy", "fear"]


def record(dialogue: int, index: int, gold: str, scores: dict[str, float]) -> PredictionRecord:
    pred = max(scores, key=scores.get)
    return PredictionRecord(f"dev/{dialogue}", index, "A", "t", pred, gold, None, scores)


def skewed_everywhere(n_dialogues: int = 20) -> list[PredictionRecord]:
    """A model that prefers neutral a little in every dialogue, though joy/fear are often the gold label."""
    records = []
    for d in range(n_dialogues):
        for i in range(6):
            gold = LABELS[(d + i) % 3]
            scores = {"neutral": 0.5, "joy": 0.3, "fear": 0.2}
            if gold != "neutral":
                scores = {"neutral": 0.45, gold: 0.4, ("fear" if gold == "joy" else "joy"): 0.15}
            records.append(record(d, i, gold, scores))
    return records


def halves_disagree() -> list[PredictionRecord]:
    """Even dialogues (6 lines, gold joy) want joy boosted; odd ones (3 lines, gold neutral, already right) are
    broken by that boost. Fitted on all of dev the boost looks good (the even dialogues have more lines)."""
    records = []
    for d in range(20):
        lines, gold = (6, "joy") if d % 2 == 0 else (3, "neutral")
        for i in range(lines):
            records.append(record(d, i, gold, {"neutral": 0.5, "joy": 0.45, "fear": 0.05}))
    return records


def test_dialogue_halves_keep_dialogues_whole():
    first, second = dialogue_halves(halves_disagree())
    assert {r.dialogue_id for r in first}.isdisjoint({r.dialogue_id for r in second})
    assert len({r.dialogue_id for r in first}) == len({r.dialogue_id for r in second}) == 10


def test_a_bias_that_holds_out_is_applied(caplog):
    with caplog.at_level(logging.INFO, logger="erc_llm.labelling.bias"):
        bias, entries = choose_label_bias(skewed_everywhere(), LABELS)
    assert entries["dev_metric_after_bias"] > entries["dev_metric_before_bias"]
    assert entries["label_bias_heldout_gain"] > 0 and entries["label_bias_applied"] is True
    assert bias == entries["label_bias"] == entries["label_bias_fitted"] and bias["neutral"] == 0.0
    check = entries["label_bias_heldout"]
    assert check["crossfit"] == pytest.approx(check["raw"] + check["gain"], abs=1e-3)
    assert [h["fit_dialogues"] for h in check["halves"]] == [10, 10] and all(h["heldout_gain"] > 0 for h in check["halves"])
    assert "applied at test" in caplog.text


def test_a_bias_that_only_fits_its_own_data_is_not_applied(caplog):
    with caplog.at_level(logging.INFO, logger="erc_llm.labelling.bias"):
        bias, entries = choose_label_bias(halves_disagree(), LABELS)
    # Same-data dev gain: optimistic; the held-out gain says the bias hurts unseen dialogues.
    assert entries["dev_metric_after_bias"] > entries["dev_metric_before_bias"]
    assert entries["label_bias_heldout_gain"] < 0 and entries["label_bias_applied"] is False
    assert bias is None and "label_bias" not in entries and entries["label_bias_fitted"]["joy"] > 0
    assert "NOT applied" in caplog.text


def test_one_dialogue_cannot_be_cross_fitted():
    records = [r for r in skewed_everywhere() if r.dialogue_id == "dev/0"]
    assert heldout_label_bias_gain(records, LABELS)["gain"] is None
    bias, entries = choose_label_bias(records, LABELS)
    assert bias is None and entries["label_bias_applied"] is False


@pytest.mark.slow
def test_recipe_without_dev_evaluations_decides_the_bias_on_its_final_dev_labelling(tmp_path, data_dir):
    """The 1.5B EmoryNLP recipe's path on SmolLM2: no evaluation during training, the model's own predictions as
    history, `calibrate_label_bias` on. Dev is labelled once after training; the held-out check on those labels
    decides the bias, and the run records the check and the decision with its test scores."""
    import json

    from watched import run_sft

    out = run_sft(tmp_path / "run", "--corpus", "emorynlp", "--layout", "packed",
                  "--template", "erc_packed_transcript.j2", "--use_history", "true",
                  "--eval_history_source", "predicted", "--packed_inline_self_predictions", "1.0",
                  "--per_device_train_batch_size", "1", "--batching", "padding_free", "--max_steps", "1",
                  "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
                  "--early_stopping_patience", "null", "--calibrate_label_bias", "true",
                  "--test_split", "test", "--eval_subsample", "60", "--test_subsample", "40",
                  data_dir=data_dir, threads=2)
    summary = json.loads((out / "run_summary.json").read_text())
    check = summary["label_bias_heldout"]
    assert check["gain"] is not None and len(check["halves"]) == 2
    assert summary["label_bias_applied"] == (check["gain"] > 0) == ("label_bias" in summary)
    dev_rows = (out / "dev" / "predictions.jsonl").read_text().splitlines()
    assert sum(h["scored_utterances"] for h in check["halves"]) == len(dev_rows) >= 60
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["extra"]["label_bias_heldout_gain"] == check["gain"]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) >= 40 and all(r["pred"] in r["scores"] for r in rows)
