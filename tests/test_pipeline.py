"""The main command end to end at CI size: every stage runs as its recipe, and the report holds both systems."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from erc_llm.pipeline import run_demo


@pytest.mark.slow
@pytest.mark.vllm
def test_reduced_demo_pipeline_reports_both_systems(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "demo"
    report = run_demo(out, test_dialogues=2, data_dir=str(data_dir), sft_examples=16, baseline_train_dialogues=30,
                      dev_examples=20)
    assert report.is_file() and report.parent == out / "report"
    text = report.read_text()
    scale = text.split("## Scale of this demo", 1)[1].split("\n## ", 1)[0]  # the report says what scale it ran at
    summary = json.loads((out / "sft" / "run_summary.json").read_text())
    assert summary["world_size"] == (2 if (os.cpu_count() or 1) >= 2 else 1) and summary["model"] == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert f"trained on {summary['train_examples']:,} MELD training lines" in scale
    assert "first 2 MELD test" in scale and "first 30 training dialogues" in scale
    rows = re.findall(r"^\| (llm:sft|encoder-fusion) \| .* \| (\d+\.\d+) \[", text, flags=re.M)
    assert {name for name, _ in rows} == {"llm:sft", "encoder-fusion"}, text[:2000]
    assert list((out / "report").glob("confusion_*.png"))
    labelled = [json.loads(line) for line in (out / "label" / "predictions.jsonl").read_text().splitlines()]
    baseline = [json.loads(line) for line in (out / "baseline" / "test" / "predictions.jsonl").read_text().splitlines()]
    assert labelled and {(r["dialogue_id"], r["utterance_index"]) for r in labelled} == {
        (r["dialogue_id"], r["utterance_index"]) for r in baseline}
    assert (out / "sft" / "adapter_config.json").is_file() and any((out / "indices").iterdir())
