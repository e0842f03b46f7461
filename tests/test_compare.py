"""Behavioural tests for ``erc-llm compare`` (erc_llm.evaluation.compare)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from erc_llm.evaluation import (
    PredictionRecord,
    compare_runs,
    evaluate_run,
    register_cli,
    write_metrics,
    write_predictions,
)
from erc_llm.evaluation.compare import CompareError, reference_results_for
from erc_llm.evaluation.rundir import read_predictions

MELD_LABELS = ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"]
MELD_LABEL_SHARES = [0.48, 0.16, 0.11, 0.13, 0.08, 0.03, 0.01]
SPEAKERS = ["Ross", "Rachel", "Monica", "Chandler", "Joey", "Phoebe"]


def build_run(
    run_dir: Path,
    system: str,
    accuracy: float,
    seed: int,
    *,
    corpus: str = "meld",
    split: str = "test",
    n_dialogues: int = 40,
    drop_last: int = 0,
) -> Path:
    """Write a synthetic MELD-like run directory (same gold for every seed, noisy predictions)."""
    gold_rng = np.random.default_rng(1234)
    pred_rng = np.random.default_rng(seed)
    records = []
    for dialogue in range(n_dialogues):
        for index in range(int(gold_rng.integers(3, 12))):
            gold = str(gold_rng.choice(MELD_LABELS, p=MELD_LABEL_SHARES))
            pred = gold if pred_rng.random() < accuracy else str(pred_rng.choice(MELD_LABELS))
            records.append(
                PredictionRecord(
                    dialogue_id=f"dia{dialogue}",
                    utterance_index=index,
                    speaker=SPEAKERS[(dialogue + index) % len(SPEAKERS)],
                    text=f"Utterance {index} of dialogue {dialogue} | with a pipe",
                    gold=gold,
                    pred=pred,
                    utterance_id=f"dia{dialogue}_utt{index}",
                )
            )
    if drop_last:
        records = records[:-drop_last]
    write_predictions(run_dir / "predictions.jsonl", records)
    write_metrics(run_dir, evaluate_run(run_dir, MELD_LABELS), system=system, corpus=corpus, split=split)
    return run_dir


def test_compare_writes_report_and_figures(tmp_path: Path) -> None:
    baseline = build_run(tmp_path / "run_zero_shot", "zero-shot Llama", 0.45, seed=1)
    tuned = build_run(tmp_path / "run_lora", "LoRA SFT", 0.7, seed=2)
    report_path = compare_runs([baseline, tuned], tmp_path / "out", n_resamples=200, seed=0)

    report = report_path.read_text(encoding="utf-8")
    assert report_path == tmp_path / "out" / "report.md"
    assert "zero-shot Llama" in report and "LoRA SFT" in report
    assert "Published reference numbers (reported by their papers, not reproduced here)" in report
    for reference in ("InstructERC", "69.15", "BiosERC", "68.72", "SPCL", "67.25", "CoMPM", "66.52"):
        assert reference in report
    assert "TUCORE-GCN" not in report  # EmoryNLP-only reference must not appear for MELD
    assert "95% CI" in report and "Δ weighted-F1" in report
    assert "95% CI, dialogue bootstrap, 200 resamples" in report and "Paired dialogue bootstrap" in report
    assert "## Disagreements" in report and "## Per-class F1" in report
    assert "\\| with a pipe" in report  # utterance text cannot break the markdown table

    pngs = sorted(path.name for path in (tmp_path / "out").glob("*.png"))
    assert pngs == ["confusion_1_zero-shot-llama.png", "confusion_2_lora-sft.png", "per_class_f1.png"]
    for name in pngs:
        assert (tmp_path / "out" / name).stat().st_size > 1000
        assert f"]({name})" in report
    assert not [path for path in (tmp_path / "out").iterdir() if path.name.endswith(".tmp")]


def test_compare_is_deterministic_and_uses_recorded_labels(tmp_path: Path) -> None:
    first = build_run(tmp_path / "a", "A", 0.5, seed=3)
    second = build_run(tmp_path / "b", "B", 0.6, seed=4)
    options = {"n_resamples": 50, "labels_from_run": True, "figures": False}
    report_one = compare_runs([first, second], tmp_path / "one", **options)
    report_two = compare_runs([first, second], tmp_path / "two", **options)
    assert report_one.read_text(encoding="utf-8") == report_two.read_text(encoding="utf-8")
    assert "(7; recorded in" in report_one.read_text(encoding="utf-8")
    assert not list((tmp_path / "one").glob("*.png"))


def test_compare_cli_prints_report_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = build_run(tmp_path / "emory_run", "solo", 0.5, seed=5, corpus="EmoryNLP")
    parser = argparse.ArgumentParser(prog="erc-llm")
    register_cli(parser.add_subparsers(dest="command", required=True))
    out = str(tmp_path / "out")
    args = parser.parse_args(["compare", str(run), "--out", out, "--bootstrap", "0", "--no-figures"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(tmp_path / "out" / "report.md")
    report = Path(printed).read_text(encoding="utf-8")
    assert "TUCORE-GCN" in report and "39.24" in report
    assert "Only one system" in report


def test_mismatched_utterances_error_says_how_many_and_shows_examples(tmp_path: Path) -> None:
    full = build_run(tmp_path / "full", "full", 0.5, seed=6)
    truncated = build_run(tmp_path / "truncated", "truncated", 0.5, seed=7, drop_last=3)
    with pytest.raises(CompareError, match=r"3 keys differ - 3 only in the first \(e\.g\. 'dia39'#"):
        compare_runs([full, truncated], tmp_path / "out", n_resamples=10)


def test_mismatched_corpus_or_split_is_an_error(tmp_path: Path) -> None:
    meld = build_run(tmp_path / "meld", "m", 0.5, seed=8)
    emory = build_run(tmp_path / "emory", "e", 0.5, seed=9, corpus="emorynlp")
    dev = build_run(tmp_path / "dev", "d", 0.5, seed=10, split="dev")
    with pytest.raises(CompareError, match="runs differ in corpus: .*'meld'.*'emorynlp'"):
        compare_runs([meld, emory], tmp_path / "out", n_resamples=10)
    with pytest.raises(CompareError, match="runs differ in split"):
        compare_runs([meld, dev], tmp_path / "out", n_resamples=10)


def test_cli_reports_errors_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="erc-llm")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert args.func(args) == 2
    assert "does not exist" in capsys.readouterr().err


def test_reference_lookup_normalises_names() -> None:
    assert {ref.system for ref in reference_results_for("EmoryNLP", "Test")} == {
        "InstructERC",
        "BiosERC",
        "SPCL",
        "TUCORE-GCN",
        "CoMPM",
    }
    assert [ref.weighted_f1 for ref in reference_results_for("MELD", "test")] == [69.15, 68.72, 67.25, 66.52]
    assert reference_results_for("iemocap", "test") == []


def test_common_only_compares_the_shared_subset(tmp_path: Path) -> None:
    full = build_run(tmp_path / "full", "full", 0.5, seed=6)
    truncated = build_run(tmp_path / "truncated", "truncated", 0.5, seed=7, drop_last=3)
    report = compare_runs([truncated, full], tmp_path / "out", n_resamples=10, figures=False, common_only=True)
    text = report.read_text()
    n_full = len(read_predictions(full))
    assert f"Compared on the {n_full - 3} utterances every run labelled" in text
    assert f"Utterances scored: {n_full - 3}" in text
