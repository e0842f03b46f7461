"""The main job end to end (`erc-llm demo`, `make demo`): every stage runs as the recipe a user would run.

prepare data -> speaker registry, biographies + FAISS index -> LoRA SFT of SmolLM2-135M -> vLLM labelling of a
MELD test slice -> encoder-fusion baseline on the same slice -> comparison report. Offline; sized for a quarter of an
hour on an idle 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"


def _banner(step: int, total: int, title: str) -> float:
    """Print a stage header; return the start time."""
    print(f"\n[{step}/{total}] {title}", flush=True)
    return time.perf_counter()


def _run(cmd: list[str], log: Path) -> None:
    """Run a stage's command with its output streamed to a log file and its progress bars echoed on one line."""
    print("  $ " + " ".join(str(c) for c in cmd), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
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


def run_demo(out: Path, test_dialogues: int = 12, data_dir: str | None = None, sft_examples: int | None = None,
             baseline_train_dialogues: int | None = None) -> Path:
    """Run every stage into `out`; return the comparison report's path.

    The defaults are the recipes' (demo.yaml: 96 SFT examples; demo_meld.yaml: 300 baseline training dialogues);
    `sft_examples` and `baseline_train_dialogues` shrink them further (the CI test of the whole pipeline does).
    """
    from erc_llm.data.prepare import prepare
    from erc_llm.evaluation.compare import compare_runs

    py = sys.executable
    total = 6
    out.mkdir(parents=True, exist_ok=True)
    indices = out / "indices"
    data = ["--data_dir", data_dir] if data_dir else []
    started = time.perf_counter()

    t = _banner(1, total, "data: prepare and verify MELD")
    for r in prepare(["meld"], data_dir):
        print(f"  {r.split:<5} {r.utterances:>5} utterances, {r.dialogues:>4} dialogues ({r.action})")
    print(f"  {time.perf_counter() - t:.0f} s")

    t = _banner(2, total, "retrieval: speaker registry, biographies and FAISS indices from MELD train")
    _run([py, "-m", "erc_llm.cli", "index", "build", "--corpus", "meld", "--index-dir", indices,
          "--config", RECIPES / "smollm2-135m" / "sft" / "demo.yaml",
          *(["--data-dir", data_dir] if data_dir else [])], out / "logs" / "index.log")
    print(f"  {time.perf_counter() - t:.0f} s")

    t = _banner(3, total, "SFT: LoRA on SmolLM2-135M-Instruct (context + biography + emotion history)")
    _run([py, RECIPES / "sft.py", "--config", RECIPES / "smollm2-135m" / "sft" / "demo.yaml",
          "--output_dir", out / "sft", "--index_dir", indices, *data,
          *(["--train_subsample", sft_examples] if sft_examples else [])], out / "logs" / "sft.log")
    print(f"  {time.perf_counter() - t:.0f} s")

    t = _banner(4, total, f"label: vLLM on the first {test_dialogues} MELD test dialogues with the adapter")
    # Relabelled on every run (about a minute): after an upgrade that changes the engine settings or the adapter,
    # an earlier demo's labelling folder would otherwise be refused as a resume with other settings.
    shutil.rmtree(out / "label", ignore_errors=True)
    _run([py, RECIPES / "label.py", "--config", RECIPES / "smollm2-135m" / "label" / "meld_test.yaml",
          "--adapter", out / "sft", "--max_dialogues", str(test_dialogues), "--output_dir", out / "label",
          "--index_dir", indices, *data], out / "logs" / "label.log")
    print(f"  {time.perf_counter() - t:.0f} s")

    t = _banner(5, total, "baseline: encoder fusion (frozen MiniLM + context) on the same test slice")
    _run([py, RECIPES / "baseline.py", "--config", RECIPES / "encoder-fusion" / "demo_meld.yaml",
          "--output_dir", out / "baseline", "--max_eval_dialogues", str(test_dialogues), *data,
          *(["--max_train_dialogues", baseline_train_dialogues] if baseline_train_dialogues else [])],
         out / "logs" / "baseline.log")
    print(f"  {time.perf_counter() - t:.0f} s")

    t = _banner(6, total, "compare: metrics, bootstrap CIs, confusion matrices")
    report = compare_runs([out / "label", out / "baseline" / "test"], out / "report", common_only=True)
    print(f"  {time.perf_counter() - t:.0f} s")
    print(f"\ndone in {(time.perf_counter() - started) / 60:.1f} min; report: {report}")
    return report


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add `erc-llm demo`."""
    p = subparsers.add_parser("demo", help="run the whole pipeline end to end on a small offline default")
    p.add_argument("--out", default="runs/demo", help="folder for every stage's output")
    p.add_argument("--test-dialogues", type=int, default=12, help="MELD test dialogues labelled by both systems")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--sft-examples", type=int, default=None, help="LoRA training examples (default: demo.yaml's 96)")
    p.add_argument("--baseline-train-dialogues", type=int, default=None,
                   help="MELD train dialogues for the baseline (default: demo_meld.yaml's 300)")
    p.set_defaults(func=lambda args: run_demo(Path(args.out), args.test_dialogues, args.data_dir, args.sft_examples,
                                              args.baseline_train_dialogues) and 0)
