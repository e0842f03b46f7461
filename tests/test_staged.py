"""`erc-llm staged`: a recipe trained on an earlier model's labels of the training split runs as one command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from erc_llm.training.config import dump_yaml, parse_sft_args, resolved_config
from erc_llm.training.staged import StagedRecipeError, plan

REPO = Path(__file__).resolve().parents[1]
QWEN = REPO / "recipes" / "qwen2.5-coder-0.5b" / "sft"


def _after(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


@pytest.mark.parametrize("corpus", ["meld", "emorynlp"])
def test_the_recorded_staged_recipes_plan_the_stages_their_headers_list(corpus: str, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing trained here: every stage is to run
    recipe = QWEN / f"{corpus}_packed_inline_predictions.yaml"
    header = recipe.read_text()
    first, label, second = plan(str(recipe))
    assert not (first.done or label.done or second.done)
    assert _after(first.command, "--config").endswith(f"recipes/qwen2.5-coder-0.5b/sft/{corpus}_packed.yaml")
    assert f"python recipes/sft.py --config recipes/qwen2.5-coder-0.5b/sft/{corpus}_packed.yaml" in header
    # stage 2 is the header's `erc-llm label` command: the first run's adapter, the training split, the folder
    # the recipe reads its inline labels from
    assert label.command[2:4] == ["erc_llm.cli", "label"] and _after(label.command, "--split") == "train"
    for flag in ("--model", "--adapter", "--corpus", "--output_dir"):
        assert f"{flag} {_after(label.command, flag)}" in header
    assert str(label.done_file) == yaml.safe_load(header)["packed_inline_predictions"]
    assert second.command[-2:] == ["--config", str(recipe)]
    # on a GPU box the training stages start under accelerate
    launched = plan(str(recipe), launch="accelerate launch --num_processes 4")
    assert launched[0].command[:4] == ["accelerate", "launch", "--num_processes", "4"]
    assert launched[2].command[:4] == launched[0].command[:4] and launched[1].command == label.command


def test_finished_stages_are_skipped_and_a_first_run_of_other_settings_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = str(QWEN / "meld_packed_inline_predictions.yaml")
    first_dir = tmp_path / "runs" / "qwen2.5-coder-0.5b-meld-packed"
    first_dir.mkdir(parents=True)
    config = resolved_config(*parse_sft_args(["--config", str(QWEN / "meld_packed.yaml")]))
    (first_dir / "erc_config.yaml").write_text(dump_yaml(config))
    (first_dir / "run_summary.json").write_text("{}")
    labels = tmp_path / "runs" / "label-train" / "qwen2.5-coder-0.5b-meld-packed" / "predictions.jsonl"
    labels.parent.mkdir(parents=True)
    labels.write_text("")
    assert [stage.done for stage in plan(recipe)] == [True, True, False]
    # a finished first run trained with other settings is not silently used as the recipe's first model
    (first_dir / "erc_config.yaml").write_text(dump_yaml({**config, "learning_rate": 1.0}))
    with pytest.raises(StagedRecipeError, match=r"qwen2.5-coder-0.5b-meld-packed holds a finished run with other"):
        plan(recipe)


def test_a_recipe_that_is_not_staged_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(StagedRecipeError, match=r"meld_packed\.yaml: a staged recipe sets both"):
        plan(str(QWEN / "meld_packed.yaml"))
    recipe = yaml.safe_load((QWEN / "meld_packed_inline_predictions.yaml").read_text())
    path = tmp_path / "staged.yaml"
    path.write_text(yaml.safe_dump({**recipe, "packed_inline_predictions_recipe": "recipes/nope.yaml"}))
    with pytest.raises(StagedRecipeError, match=r"staged\.yaml: packed_inline_predictions_recipe 'recipes/nope"):
        plan(str(path))
    path.write_text(yaml.safe_dump({**recipe, "corpus": "emorynlp"}))
    with pytest.raises(StagedRecipeError, match=r"trains on 'meld', this recipe on 'emorynlp'"):
        plan(str(path))


@pytest.mark.slow
def test_a_staged_recipe_runs_its_three_stages_then_reuses_them(tmp_path: Path) -> None:
    """Real SmolLM2-135M, packed layout, a user corpus: sft.py alone says how to get its missing inline labels;
    `erc-llm staged` trains the first model, labels the training split with it, trains the recipe on those labels;
    run again, it trains nothing."""
    from test_user_corpus import synthetic_corpus

    from erc_llm.evaluation.rundir import read_predictions

    folder = synthetic_corpus(tmp_path)
    smoke = yaml.safe_load((REPO / "recipes" / "smollm2-135m" / "sft" / "smoke.yaml").read_text())
    first = {**smoke, "corpus": str(folder), "layout": "packed", "template": "erc_packed.j2",
             "batching": "padding_free", "max_length": 1024, "train_subsample": None, "eval_subsample": None,
             "max_steps": 2, "eval_steps": 2, "save_steps": 2, "index_dir": str(tmp_path / "indices"),
             "output_dir": str(tmp_path / "first")}
    (tmp_path / "first.yaml").write_text(yaml.safe_dump(first))
    labels_file = tmp_path / "label" / "predictions.jsonl"
    second = {**first, "output_dir": str(tmp_path / "second"), "packed_inline_predictions": str(labels_file),
              "packed_inline_predictions_recipe": str(tmp_path / "first.yaml")}
    (tmp_path / "second.yaml").write_text(yaml.safe_dump(second))
    (tmp_path / "label.yaml").write_text("backend: hf\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}

    alone = subprocess.run([sys.executable, str(REPO / "recipes" / "sft.py"), "--config", str(tmp_path / "second.yaml")],
                           env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert alone.returncode == 2 and f"packed_inline_predictions {labels_file} does not exist" in alone.stderr
    assert "erc-llm staged --config" in alone.stderr

    staged = [sys.executable, "-m", "erc_llm.cli", "staged", "--config", str(tmp_path / "second.yaml"),
              "--label-config", str(tmp_path / "label.yaml")]
    run = subprocess.run(staged, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count(": to run") == 3
    train_lines = sum(len(json.loads(line)["utterances"]) for line in (folder / "train.jsonl").read_text().splitlines())
    labelled = read_predictions(labels_file.parent)
    assert len(labelled) == train_lines and all(r.gold is not None for r in labelled)
    summary = json.loads((tmp_path / "second" / "run_summary.json").read_text())
    disagree = sum(r.pred != r.gold for r in labelled)
    assert summary["predicted_inline_labels_not_gold"] == disagree  # stage 3 showed stage 2's labels inline
    saved = yaml.safe_load((tmp_path / "second" / "erc_config.yaml").read_text())
    assert saved["packed_inline_predictions"] == str(labels_file)

    stamps = [p.stat().st_mtime_ns for p in (tmp_path / "first" / "run_summary.json", labels_file,
                                              tmp_path / "second" / "run_summary.json")]
    again = subprocess.run(staged, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert again.returncode == 0 and again.stdout.count(": finished") == 3, again.stdout + again.stderr[-2000:]
    assert stamps == [p.stat().st_mtime_ns for p in (tmp_path / "first" / "run_summary.json", labels_file,
                                                      tmp_path / "second" / "run_summary.json")]
