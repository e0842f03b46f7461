"""The ablation runner: strict specs, resumable rows, and a table built from real run folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from erc_llm.evaluation import PredictionRecord, compute_metrics, write_metrics, write_predictions
from erc_llm.training.ablate import (
    ROW_ARGS_FILE,
    AblationSpecError,
    _fingerprint,
    collect_results,
    load_spec,
    prepare_row_dir,
    render_table,
    row_is_finished,
    run_ablation,
)

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted(REPO.glob("recipes/*/ablation/*.yaml"))
LABELS = ["neutral", "joy", "anger"]


def write_spec(path: Path, **overrides) -> Path:
    spec = {"base_config": "recipes/smollm2-135m/sft/smoke.yaml", "output_dir": str(path.parent / "out"),
            "reference": "context", "rows": {"context": {}, "+history": {"use_history": True}}}
    spec.update(overrides)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.parametrize("spec_path", SPECS, ids=[p.stem for p in SPECS])
def test_every_ablation_spec_parses_strictly(spec_path: Path) -> None:
    spec = load_spec(spec_path)  # parses every row as recipes/sft.py would
    assert spec.reference in spec.rows and len(spec.rows) >= 5
    assert {"use_biography", "use_history", "use_demonstrations"} <= {k for r in spec.rows.values() for k in r}
    assert any(r.get("class_weighting") == "none" for r in spec.rows.values())
    assert spec.recorded is None or spec.recorded.is_file(), f"{spec_path}: recorded table {spec.recorded} is missing"


def test_spec_errors_name_the_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(AblationSpecError, match=r"spec\.yaml.*unknown key.*'colour'"):
        load_spec(write_spec(tmp_path / "spec.yaml", colour="red"))
    with pytest.raises(AblationSpecError, match="reference 'missing' is not a row"):
        load_spec(write_spec(tmp_path / "spec.yaml", reference="missing"))
    with pytest.raises(AblationSpecError, match="row '\\+history' does not parse"):
        load_spec(write_spec(tmp_path / "spec.yaml", rows={"context": {}, "+history": {"use_histroy": True}}))
    with pytest.raises(AblationSpecError, match="base_config"):
        load_spec(write_spec(tmp_path / "spec.yaml", base_config="recipes/nope.yaml"))
    with pytest.raises(AblationSpecError, match=r"spec\.yaml: recorded table 'evaluation/nope.json' not found"):
        load_spec(write_spec(tmp_path / "spec.yaml", recorded="evaluation/nope.json"), validate=False)


def test_rows_are_reused_only_when_their_arguments_match(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path / "spec.yaml"), validate=False)
    run_dir = spec.output_dir / "context"
    run_dir.mkdir(parents=True)
    assert not row_is_finished(spec, "context")
    (run_dir / ROW_ARGS_FILE).write_text(json.dumps({"fingerprint": _fingerprint(spec.row_args("context"))}))
    assert not row_is_finished(spec, "context")  # no metrics.json yet: the run did not finish
    (run_dir / "metrics.json").write_text("{}")
    assert row_is_finished(spec, "context")
    spec.common["train_subsample"] = 99  # other arguments: not the same experiment any more
    assert not row_is_finished(spec, "context")


def test_a_row_spelled_differently_with_the_same_settings_is_reused(tmp_path: Path) -> None:
    """A finished row is matched by the settings its run saved, not only by the literal arguments: a spec that pins
    in `common` what its base config used to say is the same experiment (the Qwen ablations' one-epoch pin)."""
    from erc_llm.training.config import dump_yaml, parse_sft_args, resolved_config

    spec = load_spec(write_spec(tmp_path / "spec.yaml"), validate=False)
    run_dir = spec.output_dir / "context"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text("{}")
    (run_dir / ROW_ARGS_FILE).write_text(json.dumps({"fingerprint": _fingerprint(spec.row_args("context"))}))
    (run_dir / "erc_config.yaml").write_text(dump_yaml(resolved_config(*parse_sft_args(spec.row_args("context")))))
    epochs = parse_sft_args(spec.row_args("context"))[1].num_train_epochs
    spec.common["num_train_epochs"] = epochs  # new arguments, same settings
    assert row_is_finished(spec, "context")
    spec.common["num_train_epochs"] = epochs + 1  # other settings: train it again
    assert not row_is_finished(spec, "context")
    # a run saved before a setting existed behaved as its default: reused while the row keeps the default
    del spec.common["num_train_epochs"]
    saved = yaml.safe_load((run_dir / "erc_config.yaml").read_text())
    assert saved.pop("label_loss") == "vocabulary"
    (run_dir / "erc_config.yaml").write_text(dump_yaml(saved))
    (run_dir / ROW_ARGS_FILE).unlink()
    assert row_is_finished(spec, "context")
    spec.common["label_loss"] = "label_set"
    assert not row_is_finished(spec, "context")


def fake_row(run_dir: Path, preds: list[str], gold: list[str], config: dict) -> None:
    records = [PredictionRecord(f"d{i // 4}", i % 4, "s", "t", p, g) for i, (p, g) in enumerate(zip(preds, gold))]
    write_predictions(run_dir, records)
    write_metrics(run_dir, compute_metrics(gold, preds, LABELS), system="sft", corpus="meld", split="test")
    (run_dir / "run_summary.json").write_text(json.dumps(
        {"dev_weighted_f1": 0.5, "train_examples": 8, "mean_tokens_per_example": 100.0, "train_seconds": 60.0}))
    (run_dir / "erc_config.yaml").write_text(yaml.safe_dump(config))


def test_table_reports_deltas_against_the_reference_including_rows_that_hurt(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path / "spec.yaml"), validate=False)
    gold = ["neutral", "joy", "anger", "neutral"] * 10
    fake_row(spec.output_dir / "context", ["neutral", "joy", "neutral", "neutral"] * 10, gold,
             {"past_window": 2, "class_weighting": "sqrt_inverse"})
    fake_row(spec.output_dir / "+history", ["neutral"] * 40, gold,
             {"past_window": 2, "use_history": True, "class_weighting": "sqrt_inverse"})
    results = collect_results(spec, n_resamples=200)
    assert [r["row"] for r in results] == ["context", "+history"]
    by_row = {r["row"]: r for r in results}
    assert by_row["context"]["delta_vs_reference"]["delta"] == 0.0
    assert by_row["+history"]["delta_vs_reference"]["delta"] < 0  # the row hurt, and the table says so
    assert by_row["+history"]["sources"] == "context(2) + history"
    table = render_table(spec, results, "erc-llm ablate --spec x")
    assert "| +history | context(2) + history |" in table and "reference" in table
    assert f"{100 * by_row['+history']['delta_vs_reference']['delta']:+.1f} [" in table
    assert "95% CI, dialogue bootstrap, 200 resamples" in table
    assert by_row["+history"]["delta_vs_reference"]["common_dialogues"] == 10  # fake_row: 4 lines a dialogue


@pytest.mark.slow
def test_real_ablation_runs_rows_writes_the_table_and_resumes(tmp_path: Path, data_dir: Path) -> None:
    """Two real SFT rows (smoke scale, one with predicted emotion history at test time), then a rerun reuses them."""
    os.environ["ERC_LLM_DATA_DIR"] = str(data_dir)
    spec_path = write_spec(tmp_path / "spec.yaml", parallel=2,
                           common={"test_split": "test", "test_subsample": 20, "max_steps": 2})
    spec = load_spec(spec_path)
    report = run_ablation(spec)
    table = report.read_text()
    assert "| context |" in table and "| +history |" in table
    rows = json.loads((spec.output_dir / "ablation.json").read_text())["rows"]
    assert [r["row"] for r in rows] == ["context", "+history"] and all(r["test_utterances"] >= 20 for r in rows)
    stamps = {row: (spec.output_dir / row / "metrics.json").stat().st_mtime_ns for row in spec.rows}
    run_ablation(load_spec(spec_path))  # resume: nothing left to train
    assert stamps == {row: (spec.output_dir / row / "metrics.json").stat().st_mtime_ns for row in spec.rows}


def test_table_lists_rows_not_run_yet(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path / "spec.yaml"), validate=False)
    gold = ["neutral", "joy", "anger", "neutral"] * 5
    fake_row(spec.output_dir / "context", gold, gold, {"past_window": 2})
    (spec.output_dir / "context" / ROW_ARGS_FILE).write_text(json.dumps({"fingerprint": _fingerprint(spec.row_args("context"))}))
    table = run_ablation(spec, table_only=True).read_text()
    assert "| +history |" in table and "**not run yet**" in table
    assert json.loads((spec.output_dir / "ablation.json").read_text())["not_run"] == ["+history"]


def test_sources_name_the_packed_layouts_whole_dialogue() -> None:
    from erc_llm.evaluation.ablation import _sources

    assert _sources({"layout": "packed", "past_window": 8, "use_history": True}) == "dialogue so far + history"
    assert _sources({"layout": "per_utterance", "past_window": 2, "use_biography": True}) == "context(2) + bio"


def test_an_unfinished_row_continues_and_a_changed_row_starts_over(tmp_path: Path) -> None:
    """A row interrupted mid-training keeps its checkpoints for sft.py to resume from; other arguments wipe it."""
    spec = load_spec(write_spec(tmp_path / "spec.yaml"), validate=False)
    run_dir = prepare_row_dir(spec, "context")
    (run_dir / "checkpoint-208").mkdir()
    assert not row_is_finished(spec, "context")
    prepare_row_dir(spec, "context")  # same arguments: continued
    assert (run_dir / "checkpoint-208").is_dir()
    spec.common["train_subsample"] = 99  # other arguments: another experiment
    prepare_row_dir(spec, "context")
    assert not (run_dir / "checkpoint-208").exists()
    assert json.loads((run_dir / ROW_ARGS_FILE).read_text())["fingerprint"] == _fingerprint(spec.row_args("context"))


def test_an_unfinished_row_spelled_differently_with_the_same_settings_continues(tmp_path: Path) -> None:
    """The MELD `+biography` case: the spec pinned in `common` what the base config said when the row started; the
    row's checkpoints are kept (its saved erc_config.yaml shows the same settings), and its marker is renewed."""
    from erc_llm.training.config import dump_yaml, parse_sft_args, resolved_config

    spec = load_spec(write_spec(tmp_path / "spec.yaml"), validate=False)
    run_dir = prepare_row_dir(spec, "context")
    (run_dir / "erc_config.yaml").write_text(dump_yaml(resolved_config(*parse_sft_args(spec.row_args("context")))))
    (run_dir / "checkpoint-208").mkdir()
    spec.common["num_train_epochs"] = parse_sft_args(spec.row_args("context"))[1].num_train_epochs
    prepare_row_dir(spec, "context")
    assert (run_dir / "checkpoint-208").is_dir()
    assert json.loads((run_dir / ROW_ARGS_FILE).read_text())["fingerprint"] == _fingerprint(spec.row_args("context"))


def test_training_minutes_count_every_part_of_a_resumed_run() -> None:
    """A resumed row's table entry is its whole training time, or says that an earlier part was not timed."""
    from erc_llm.evaluation.ablation import _minutes_all_parts, _train_time

    assert _minutes_all_parts({"train_seconds": 600.0}) == 10.0  # never interrupted
    assert _minutes_all_parts({"train_seconds": 600.0, "resumed_from": "c-2", "train_seconds_all_parts": 1200.0}) == 20.0
    untimed = {"train_seconds": 1116.0, "resumed_from": "c-208"}  # resumed from a checkpoint without its time
    assert _minutes_all_parts(untimed) is None
    assert _train_time({"train_minutes": 18.6, "train_minutes_all_parts": None}) == (
        "18.6 + earlier part not timed (resumed)")
    assert _train_time({"train_minutes": 18.6, "train_minutes_all_parts": 135.0}) == "135.0"


@pytest.mark.slow
def test_a_stopped_runner_stops_its_rows(tmp_path: Path, data_dir: Path) -> None:
    """SIGTERM to `erc-llm ablate` ends the row trainers it started (no orphan keeps writing into the row folder)."""
    import signal
    import subprocess
    import sys
    import time

    from watched import descendants

    spec_path = write_spec(tmp_path / "spec.yaml", common={"max_steps": 500})
    env = {**os.environ, "ERC_LLM_DATA_DIR": str(data_dir)}
    runner = subprocess.Popen([sys.executable, "-m", "erc_llm.cli", "ablate", "--spec", str(spec_path), "--threads", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 120
    rows: list[int] = []
    while not rows and time.monotonic() < deadline and runner.poll() is None:
        time.sleep(0.5)
        rows = descendants(runner.pid)
    assert rows, "no row trainer started"
    time.sleep(3)
    runner.send_signal(signal.SIGTERM)
    output, _ = runner.communicate(timeout=60)
    assert runner.returncode == 130, output
    assert "stopped with the runner" in output
    assert not [pid for pid in rows if Path(f"/proc/{pid}").exists()], output


def finished_rows(spec, gold: list[str], preds: dict[str, list[str]]) -> None:
    """Run folders of finished rows whose saved settings are the ones the spec's rows resolve to."""
    from erc_llm.training.config import parse_sft_args, resolved_config

    for row, row_preds in preds.items():
        config = yaml.safe_load(yaml.safe_dump(resolved_config(*parse_sft_args(spec.row_args(row)))))
        fake_row(spec.output_dir / row, row_preds, gold, config)


def test_a_recorded_row_stands_in_for_its_missing_run_folder(tmp_path: Path) -> None:
    """A new checkout has no run folders: the committed table's rows (settings + test predictions) are compared
    with a new row exactly as their run folders would have been; a record of other settings is not used."""
    import shutil

    spec = load_spec(write_spec(tmp_path / "spec.yaml"), validate=False)
    gold = ["neutral", "joy", "anger", "neutral"] * 10
    finished_rows(spec, gold, {"context": ["neutral", "joy", "neutral", "neutral"] * 10,
                               "+history": ["neutral", "joy", "anger", "joy"] * 10})
    run_ablation(spec, table_only=True)
    first = json.loads((spec.output_dir / "ablation.json").read_text())
    history = next(r for r in first["rows"] if r["row"] == "+history")
    assert history["test_predictions"]["d0"] == ["neutral", "joy", "anger", "joy"]
    assert history["config"]["use_history"] is True
    recorded = tmp_path / "recorded.json"
    shutil.copy(spec.output_dir / "ablation.json", recorded)
    shutil.rmtree(spec.output_dir / "+history")  # a new checkout: this row's run folder is gone
    spec = load_spec(write_spec(tmp_path / "spec.yaml", recorded=str(recorded)), validate=False)
    run_ablation(spec, table_only=True)
    again = json.loads((spec.output_dir / "ablation.json").read_text())
    assert again["rows"] == first["rows"] and again["not_run"] == []
    spec.rows["+history"]["ddp_find_unused_parameters"] = False  # how DDP runs, not what it trains: still it
    run_ablation(spec, table_only=True)
    assert json.loads((spec.output_dir / "ablation.json").read_text())["not_run"] == []
    spec.rows["+history"]["past_window"] = 3  # the row means another experiment now: its record is not it
    run_ablation(spec, table_only=True)
    assert json.loads((spec.output_dir / "ablation.json").read_text())["not_run"] == ["+history"]


def test_rows_recorded_without_predictions_keep_their_recorded_delta_and_say_against_what(tmp_path: Path) -> None:
    """An older table kept no test predictions: its rows keep their recorded deltas (marked †), and the table says
    whether this table's rerun reference reproduced the one those deltas were measured against."""
    spec = load_spec(write_spec(tmp_path / "spec.yaml"), validate=False)
    gold = ["neutral", "joy", "anger", "neutral"] * 10
    finished_rows(spec, gold, {"context": ["neutral", "joy", "neutral", "neutral"] * 10})
    run_ablation(spec, table_only=True)
    reference = json.loads((spec.output_dir / "ablation.json").read_text())["rows"][0]
    old_history = {**reference, "row": "+history", "overrides": {"use_history": True}, "weighted_f1": 0.1,
                   "delta_vs_reference": {**reference["delta_vs_reference"], "delta": -0.3}}
    for old in (reference, old_history):
        del old["test_predictions"], old["config"]
    recorded = tmp_path / "recorded.json"
    recorded.write_text(json.dumps({"common": {}, "rows": [reference, old_history]}))
    spec = load_spec(write_spec(tmp_path / "spec.yaml", recorded=str(recorded)), validate=False)
    table = run_ablation(spec, table_only=True).read_text()
    rows = json.loads((spec.output_dir / "ablation.json").read_text())["rows"]
    assert [r["row"] for r in rows] == ["context", "+history"] and rows[1]["carried"]["reference_reproduced"]
    assert "| +history † |" in table and "-30.0 [" in table and "reproduced exactly" in table
    recorded.write_text(json.dumps({"common": {}, "rows": [{**reference, "weighted_f1": 0.5}, old_history]}))
    table = run_ablation(spec, table_only=True).read_text()  # the rerun reference scored otherwise
    rows = json.loads((spec.output_dir / "ablation.json").read_text())["rows"]
    assert not rows[1]["carried"]["reference_reproduced"] and rows[1]["carried"]["reference_weighted_f1"] == 0.5
    assert "| +history † |" in table and "the earlier `context` run (test W-F1 50.0)" in table
    carried_twice = tmp_path / "carried_twice.json"  # that table, recorded in turn: the rows keep their reference
    carried_twice.write_text((spec.output_dir / "ablation.json").read_text())
    spec = load_spec(write_spec(tmp_path / "spec.yaml", recorded=str(carried_twice)), validate=False)
    table = run_ablation(spec, table_only=True).read_text()
    rows = json.loads((spec.output_dir / "ablation.json").read_text())["rows"]
    assert not rows[1]["carried"]["reference_reproduced"] and rows[1]["carried"]["reference_weighted_f1"] == 0.5
    assert "the earlier `context` run (test W-F1 50.0)" in table and "reproduced exactly" not in table
    spec = load_spec(write_spec(tmp_path / "spec.yaml", recorded=str(recorded)), validate=False)
    recorded.write_text(json.dumps({"common": {"max_steps": 9}, "rows": [reference, old_history]}))
    run_ablation(spec, table_only=True)  # recorded with other common settings: another experiment, not carried
    assert json.loads((spec.output_dir / "ablation.json").read_text())["not_run"] == ["+history"]


def test_a_row_killed_by_sigkill_names_the_out_of_memory_killer(tmp_path: Path, monkeypatch, capsys) -> None:
    """Two rows at once can exhaust memory (a flat batch of 4 long packed sequences took 14 GB); the kernel then
    SIGKILLs a trainer, and the runner says what that most likely was and how to go on."""
    import subprocess
    import sys

    from erc_llm.training import ablate

    spec = load_spec(write_spec(tmp_path / "spec.yaml"), validate=False)

    def killed_row(spec, row, threads):
        log = open(tmp_path / f"{row}.log", "ab")  # noqa: SIM115 - the queue closes it
        suicide = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
        return subprocess.Popen([sys.executable, "-c", suicide], stdout=log, stderr=subprocess.STDOUT), log

    monkeypatch.setattr(ablate, "_launch", killed_row)
    failed: list[str] = []
    ablate._run_queue(spec, ["context"], {}, {}, failed, threads=1)
    assert failed == ["context"]
    out = capsys.readouterr().out
    assert "out-of-memory killer" in out and "--parallel 1" in out


def test_a_failed_row_leaves_the_table_of_the_finished_rows_and_a_clear_error(tmp_path: Path, monkeypatch,
                                                                               capsys) -> None:
    """The runner's exit for a failed row is an error line naming the row and its log (no traceback), after the
    table of the rows that did finish."""
    import argparse
    import subprocess
    import sys

    from erc_llm.training import ablate

    spec_path = write_spec(tmp_path / "spec.yaml")
    spec = load_spec(spec_path, validate=False)
    gold = ["neutral", "joy", "anger", "neutral"] * 5
    finished_rows(spec, gold, {"context": gold})

    def failing_row(spec, row, threads):
        log = open(tmp_path / f"{row}.log", "ab")  # noqa: SIM115 - the queue closes it
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], stdout=log), log

    monkeypatch.setattr(ablate, "_launch", failing_row)
    args = argparse.Namespace(spec=str(spec_path), output_dir=None, parallel=None, dry_run=False, only=None,
                              table_only=False, threads=1)
    assert ablate._cmd_ablate(args) == 1
    err = capsys.readouterr().err
    assert "error: ablation row(s) ['+history'] failed" in err and "Traceback" not in err
    assert "| context |" in (spec.output_dir / "ablation.md").read_text()
