"""The main job end to end (`erc-llm demo`, `make demo`): every stage runs as the recipe a user would run.

prepare data -> speaker registry, biographies + FAISS index -> LoRA SFT of Qwen2.5-Coder-0.5B (the recorded MELD
recipe on a training slice) -> vLLM labelling of a MELD test slice -> encoder-fusion baseline on the same slice ->
comparison report, which opens with the scale the demo ran at. Offline; sized for a quarter of an hour on an idle
2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
SFT_RECIPE = RECIPES / "qwen2.5-coder-0.5b" / "sft" / "demo.yaml"
LABEL_RECIPE = RECIPES / "qwen2.5-coder-0.5b" / "label" / "meld_test.yaml"
BASELINE_RECIPE = RECIPES / "encoder-fusion" / "demo_meld.yaml"
RECORDED_RUN = "evaluation/comparison_meld/"  # the full-scale comparison the report points to


def _banner(step: int, total: int, title: str) -> float:
    """Print a stage header; return the start time."""
    print(f"\n[{step}/{total}] {title}", flush=True)
    return time.perf_counter()


def _run(cmd: list, log: Path, env: dict[str, str] | None = None) -> None:
    """Run a stage's command with its output streamed to a log file and its progress bars echoed on one line."""
    print("  $ " + " ".join(str(c) for c in cmd), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log, "wb") as handle:
        process = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert process.stdout is not None
        while chunk := process.stdout.read1(65536):
            handle.write(chunk)
            handle.flush()
            pieces = [p for p in re.split(r"[\r\n]", chunk.decode(errors="replace")) if "%|" in p]
            if pieces:
                sys.stdout.write("\r  " + pieces[-1].strip()[-110:].ljust(110))
                sys.stdout.flush()
        code = process.wait()
    print()
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"stage failed (exit {code}); log: {log}\n{tail}")


def sft_launch(processes: int) -> tuple[list, dict[str, str]]:
    """The command prefix and environment that start recipes/sft.py in `processes` CPU processes (torchrun, one
    thread each, when more than one: ~1.9x one process on the 2-core CPU)."""
    if processes <= 1:
        return [sys.executable, RECIPES / "sft.py"], {}
    threads = max(1, (os.cpu_count() or processes) // processes)
    return ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
             RECIPES / "sft.py"], {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": str(threads)})


def scale_note(out: Path, test_dialogues: int) -> str:
    """The report's opening section: what the demo trained and scored, beside the recorded full-scale run."""
    summary = json.loads((out / "sft" / "run_summary.json").read_text())
    config = yaml.safe_load((out / "sft" / "erc_config.yaml").read_text()) or {}
    baseline = yaml.safe_load((out / "baseline" / "config.yaml").read_text()) or {}  # as the baseline ran
    minutes = summary.get("train_seconds", 0.0) / 60
    return (
        "## Scale of this demo\n\n"
        f"- LLM: {config.get('model_name_or_path')} LoRA, {config.get('layout')} layout, trained on "
        f"{summary.get('train_examples'):,} MELD training lines ({summary.get('train_steps')} optimizer steps, "
        f"{minutes:.1f} min on {summary.get('world_size', 1)} process(es)); dev W-F1 "
        f"{100 * (summary.get('dev_weighted_f1') or 0):.1f} on {config.get('eval_subsample')} dev lines.\n"
        f"- Baseline: encoder fusion (frozen MiniLM + context) on the first "
        f"{baseline.get('max_train_dialogues')} training dialogues.\n"
        f"- Scored on the first {test_dialogues} MELD test dialogues only: the intervals below are wide.\n"
        f"- This is a short run of the recorded MELD recipe ({summary.get('train_examples'):,} of 9,989 training "
        "lines, one epoch of a schedule that wants two over the whole split). The recorded recipe "
        "(`recipes/qwen2.5-coder-0.5b/sft/meld_packed_self_predictions.yaml`, ~100 min on this CPU) scores 61.88 "
        f"W-F1 on the whole test split against the baseline's 56.79: `{RECORDED_RUN}`.\n\n")


def write_report(out: Path, test_dialogues: int) -> Path:
    """`erc-llm compare` of the demo's two systems, with the demo's scale stated before the scores."""
    from erc_llm.evaluation.compare import compare_runs

    report = compare_runs([out / "label", out / "baseline" / "test"], out / "report", common_only=True)
    text = report.read_text()
    report.write_text(text.replace("## Overall scores", scale_note(out, test_dialogues) + "## Overall scores", 1))
    return report


def run_demo(out: Path, test_dialogues: int = 12, data_dir: str | None = None, sft_examples: int | None = None,
             baseline_train_dialogues: int | None = None, dev_examples: int | None = None,
             processes: int | None = None) -> Path:
    """Run every stage into `out`; return the comparison report's path.

    The defaults are the recipes' (qwen2.5-coder-0.5b/sft/demo.yaml: ~4,000 training lines, 200 dev lines;
    encoder-fusion/demo_meld.yaml: 300 baseline training dialogues); `sft_examples`, `dev_examples` and
    `baseline_train_dialogues` shrink them (the CI test of the whole pipeline does). `processes`: SFT processes
    (default: two when the machine has two cores or more).
    """
    from erc_llm.data.prepare import prepare

    py = sys.executable
    total = 6
    out.mkdir(parents=True, exist_ok=True)
    indices = out / "indices"
    data = ["--data_dir", data_dir] if data_dir else []
    processes = processes or (2 if (os.cpu_count() or 1) >= 2 else 1)
    started = time.perf_counter()

    t = _banner(1, total, "data: prepare and verify MELD")
    for r in prepare(["meld"], data_dir):
        print(f"  {r.split:<5} {r.utterances:>5} utterances, {r.dialogues:>4} dialogues ({r.action})")
    print(f"  {time.perf_counter() - t:.0f} s")

    t = _banner(2, total, "retrieval: speaker registry, biographies and FAISS indices from MELD train")
    _run([py, "-m", "erc_llm.cli", "index", "build", "--corpus", "meld", "--index-dir", indices,
          "--config", SFT_RECIPE, *(["--data-dir", data_dir] if data_dir else [])], out / "logs" / "index.log")
    print(f"  {time.perf_counter() - t:.0f} s")

    t = _banner(3, total, f"SFT: LoRA on Qwen2.5-Coder-0.5B-Instruct, packed dialogues + emotion history "
                          f"({processes} process(es))")
    # A finished or interrupted earlier demo's adapter is not resumed: every run trains its own.
    shutil.rmtree(out / "sft", ignore_errors=True)
    launch, env = sft_launch(processes)
    _run([*launch, "--config", SFT_RECIPE, "--output_dir", out / "sft", "--index_dir", indices, *data,
          *(["--train_subsample", sft_examples] if sft_examples else []),
          *(["--eval_subsample", dev_examples] if dev_examples else [])], out / "logs" / "sft.log", env)
    print(f"  {time.perf_counter() - t:.0f} s")

    t = _banner(4, total, f"label: vLLM on the first {test_dialogues} MELD test dialogues with the adapter")
    # Relabelled on every run (about a minute): after an upgrade that changes the engine settings or the adapter,
    # an earlier demo's labelling folder would otherwise be refused as a resume with other settings.
    shutil.rmtree(out / "label", ignore_errors=True)
    _run([py, RECIPES / "label.py", "--config", LABEL_RECIPE, "--adapter", out / "sft",
          "--max_dialogues", str(test_dialogues), "--output_dir", out / "label", "--index_dir", indices, *data],
         out / "logs" / "label.log")
    print(f"  {time.perf_counter() - t:.0f} s")

    t = _banner(5, total, "baseline: encoder fusion (frozen MiniLM + context) on the same test slice")
    _run([py, RECIPES / "baseline.py", "--config", BASELINE_RECIPE,
          "--output_dir", out / "baseline", "--max_eval_dialogues", str(test_dialogues), *data,
          *(["--max_train_dialogues", baseline_train_dialogues] if baseline_train_dialogues else [])],
         out / "logs" / "baseline.log")
    print(f"  {time.perf_counter() - t:.0f} s")

    t = _banner(6, total, "compare: metrics, bootstrap CIs, confusion matrices")
    report = write_report(out, test_dialogues)
    print(f"  {time.perf_counter() - t:.0f} s")
    print(f"\ndone in {(time.perf_counter() - started) / 60:.1f} min; report: {report}")
    return report


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add `erc-llm demo`."""
    p = subparsers.add_parser("demo", help="run the whole pipeline end to end on a small offline default")
    p.add_argument("--out", default="runs/demo", help="folder for every stage's output")
    p.add_argument("--test-dialogues", type=int, default=12, help="MELD test dialogues labelled by both systems")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--sft-examples", type=int, default=None,
                   help="LoRA training lines, whole dialogues (default: qwen2.5-coder-0.5b/sft/demo.yaml's 4,000)")
    p.add_argument("--dev-examples", type=int, default=None, help="dev lines scored after training (default: 200)")
    p.add_argument("--processes", type=int, default=None, help="SFT processes (default: 2 on a 2-core machine)")
    p.add_argument("--baseline-train-dialogues", type=int, default=None,
                   help="MELD train dialogues for the baseline (default: demo_meld.yaml's 300)")
    p.set_defaults(func=lambda args: run_demo(Path(args.out), args.test_dialogues, args.data_dir, args.sft_examples,
                                              args.baseline_train_dialogues, args.dev_examples,
                                              args.processes) and 0)
