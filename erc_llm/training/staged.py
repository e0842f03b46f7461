"""Staged recipes as one command (`erc-llm staged`): a packed recipe that trains with an earlier model's labels of
the training split inline (`packed_inline_predictions`) names the recipe of that earlier model
(`packed_inline_predictions_recipe`), and this runs the three stages in order:

    erc-llm staged --config recipes/qwen2.5-coder-0.5b/sft/meld_packed_inline_predictions.yaml [--dry-run]
        [--label-config <erc-llm label YAML for stage 2>] [--launch "accelerate launch ..."]
        [further sft.py arguments for stage 3]

1. `python recipes/sft.py --config <packed_inline_predictions_recipe>`: the first model;
2. `erc-llm label --model <its model> --adapter <its output_dir> --corpus <corpus> --split train
   --output_dir <folder of packed_inline_predictions>`: its labels of the training split;
3. `python recipes/sft.py --config <the recipe>`: the recipe itself.

A stage whose output is complete is skipped (a finished first run is reused only when its saved settings are the
first recipe's); an unfinished one is run again with the same command, which continues it (sft.py resumes from
its last checkpoint, `erc-llm label` from the lines it wrote). Extra arguments after the options are passed to
the third stage's sft.py.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from erc_llm.training.ablate import REPO, SFT_SCRIPT


class StagedRecipeError(ValueError):
    """A staged recipe that cannot run (named by its file)."""


@dataclass(frozen=True)
class Stage:
    """One stage: its command, the file that says it finished, and whether it has."""

    name: str
    command: list[str]
    done_file: Path
    done: bool


def plan(config: str, extra: list[str] | None = None, label_config: str | None = None,
         launch: str | None = None) -> list[Stage]:
    """The stages of a staged recipe and their state (relative paths are relative to the current folder);
    `label_config` is an `erc-llm label` YAML for stage 2 (engine settings; default: its vLLM defaults), `launch`
    what starts sft.py for stages 1 and 3 (default: this Python; e.g. "accelerate launch --num_processes 4")."""
    from erc_llm.training.config import parse_sft_args, resolved_config, saved_run_matches

    second_args = ["--config", config, *(extra or [])]
    data_args, training_args, _ = parse_sft_args(second_args)
    first_config = training_args.packed_inline_predictions_recipe
    predictions = training_args.packed_inline_predictions
    if not first_config or not predictions:
        raise StagedRecipeError(f"{config}: a staged recipe sets both packed_inline_predictions (the first model's "
                                "labels of the training split) and packed_inline_predictions_recipe (its recipe)")
    first_path = Path(first_config)
    if not first_path.is_file() and (REPO / first_path).is_file():
        first_path = REPO / first_path
    if not first_path.is_file():
        raise StagedRecipeError(f"{config}: packed_inline_predictions_recipe {first_config!r} is not a file")
    first_args = ["--config", str(first_path)]
    first_data, first_training, first_model = parse_sft_args(first_args)
    if first_data.corpus != data_args.corpus:
        raise StagedRecipeError(f"{config}: its first recipe {first_config} trains on {first_data.corpus!r}, "
                                f"this recipe on {data_args.corpus!r}")
    first_dir = Path(first_training.output_dir)
    label_dir = Path(predictions)
    if label_dir.name == "predictions.jsonl":
        label_dir = label_dir.parent
    if (first_dir / "run_summary.json").is_file() and not saved_run_matches(
            first_dir, resolved_config(first_data, first_training, first_model)):
        raise StagedRecipeError(f"{first_dir} holds a finished run with other settings than {first_config}; move it "
                                "away (or give the first recipe another output_dir) so it is trained as written")
    label = [sys.executable, "-m", "erc_llm.cli", "label", "--model", first_model.model_name_or_path,
             "--adapter", str(first_dir), "--corpus", first_data.corpus, "--split", "train",
             "--output_dir", str(label_dir)]
    if first_data.data_dir:
        label += ["--data_dir", str(first_data.data_dir)]
    if label_config:
        label += ["--config", label_config]
    second_dir = Path(training_args.output_dir)
    sft = [*(shlex.split(launch) if launch else [sys.executable]), str(SFT_SCRIPT)]
    return [
        Stage("first model", [*sft, *first_args], first_dir / "run_summary.json",
              (first_dir / "run_summary.json").is_file()),
        Stage("its labels of the training split", label, label_dir / "predictions.jsonl",
              (label_dir / "predictions.jsonl").is_file()),
        Stage("the recipe", [*sft, *second_args], second_dir / "run_summary.json",
              (second_dir / "run_summary.json").is_file()),
    ]


def run_staged(config: str, extra: list[str] | None = None, label_config: str | None = None,
               launch: str | None = None, dry_run: bool = False) -> int:
    """Run the unfinished stages in order; 0 when all finished, else the failing stage's exit code."""
    stages = plan(config, extra, label_config, launch)
    for i, stage in enumerate(stages, start=1):
        state = f"finished ({stage.done_file})" if stage.done else "to run"
        print(f"stage {i}, {stage.name}: {state}\n  {' '.join(stage.command)}", flush=True)
        if stage.done or dry_run:
            continue
        code = subprocess.call(stage.command)
        if code != 0:
            print(f"stage {i} ({stage.name}) failed with exit code {code}; the same command continues it",
                  file=sys.stderr, flush=True)
            return code
        if not stage.done_file.is_file():
            print(f"stage {i} ({stage.name}) ended without writing {stage.done_file}", file=sys.stderr, flush=True)
            return 1
    return 0


def _cmd_staged(args: argparse.Namespace) -> int:
    """`erc-llm staged`."""
    try:
        return run_staged(args.config, args.options, args.label_config, args.launch, dry_run=args.dry_run)
    except StagedRecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add `erc-llm staged`."""
    p = subparsers.add_parser("staged", help="run a recipe trained on an earlier model's labels, all stages in order")
    p.add_argument("--config", required=True, help="the recipe (sets packed_inline_predictions_recipe)")
    p.add_argument("--label-config", default=None,
                   help="erc-llm label YAML for stage 2 (e.g. backend: hf); default: erc-llm label's own defaults")
    p.add_argument("--launch", default=None,
                   help='what starts sft.py for stages 1 and 3, e.g. "accelerate launch --num_processes 4" '
                        "(default: this Python, one process)")
    p.add_argument("--dry-run", action="store_true", help="print each stage's command and state, run nothing")
    p.set_defaults(func=_cmd_staged, passthrough=True, options=[])  # further arguments: sft.py's, for stage 3
