"""The resumable prediction log and the labelling config (no model needed)."""

from __future__ import annotations

import json

import pytest

from erc_llm.evaluation.rundir import PredictionRecord
from erc_llm.labelling.config import LabelConfig
from erc_llm.labelling.writer import PARTIAL_NAME, ResumableWriter, ResumeMismatchError


def record(i: int) -> PredictionRecord:
    return PredictionRecord(dialogue_id="d", utterance_index=i, speaker="A", text=f"line {i}", pred="joy",
                            gold="joy", scores={"joy": 0.9, "neutral": 0.1})


def test_resume_skips_done_and_drops_torn_line(tmp_path):
    writer = ResumableWriter(tmp_path, {"model": "m"})
    writer.append([record(0), record(1)])
    with open(tmp_path / PARTIAL_NAME, "a") as handle:  # a write killed half-way
        handle.write(json.dumps(record(2).to_dict())[:25])
    again = ResumableWriter(tmp_path, {"model": "m"})
    assert set(again.done) == {("d", 0), ("d", 1)} and again.torn_lines == 1
    again.append([record(1), record(2)])  # 1 is a duplicate and is ignored
    lines = (tmp_path / PARTIAL_NAME).read_text().splitlines()
    assert [json.loads(line)["utterance_index"] for line in lines] == [0, 1, 2]
    assert [r.utterance_index for r in again.finish([("d", i) for i in range(3)])] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="1 utterance"):
        again.finish([("d", i) for i in range(4)])


def test_resume_with_other_settings_is_an_error(tmp_path):
    ResumableWriter(tmp_path, {"model": "m", "adapter": "a1"})
    with pytest.raises(ResumeMismatchError, match="adapter"):
        ResumableWriter(tmp_path, {"model": "m", "adapter": "a2"})


def test_label_config_validation(tmp_path):
    from erc_llm.labelling.run import resolve_label_input

    with pytest.raises(ValueError, match="backend"):
        LabelConfig(backend="tgi")
    with pytest.raises(ValueError, match="endpoint"):
        LabelConfig(backend="endpoint")
    mine = tmp_path / "mine.jsonl"  # no --labels, no adapter, nothing declared: which labels is unknowable
    mine.write_text('{"dialogue_id": "a", "utterances": [{"speaker": "A", "text": "hi"}]}\n')
    with pytest.raises(ValueError, match="no label set"):
        resolve_label_input(LabelConfig(corpus=str(mine)))
    assert LabelConfig(engine_args='{"max_model_len": 512}').engine_args == {"max_model_len": 512}


def test_resume_mismatch_is_one_error_line_from_a_recipe(tmp_path, capsys) -> None:
    from erc_llm.data.cli import run_guarded

    ResumableWriter(tmp_path, {"model": "a"})

    def relabel(_args):
        ResumableWriter(tmp_path, {"model": "b"})

    assert run_guarded(relabel, None) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "different settings (model)" in err and "Traceback" not in err
