"""bf16 against float32 on this CPU: what `erc_llm.precision` decides, and what it is worth here.

Two measurements, one after the other on an otherwise idle machine:

* a matmul of the shape of Qwen2.5-Coder-1.5B's MLP (512 tokens x 1536 -> 8960), frozen and trainable weights
  (the CPU kernels differ), float32 against bfloat16;
* the demo SFT recipe (recipes/qwen2.5-coder-0.5b/sft/demo.yaml: Qwen2.5-Coder-0.5B, packed transcript, two
  torchrun processes with one thread each) for `--steps` optimizer steps, once in float32 (what the fallback
  runs where the CPU has no native bf16) and once with `ERC_LLM_KEEP_BF16=1` (the recipe's bf16 as written).
  Seconds per optimizer step from run_summary.json (train_step_end_seconds); the dev labelling the recipe does
  afterwards is cut to `--dev-lines` lines and not timed.

Prints the figures and writes `--out` (JSON) with the machine, date and command.

    python evaluation/bench_cpu_precision.py --steps 4 --out evaluation/bench_cpu_precision.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from erc_llm.precision import KEEP_BF16_ENV, cpu_has_native_bf16

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "qwen2.5-coder-0.5b" / "sft" / "demo.yaml"
SHAPE = (512, 1536, 8960)  # tokens, hidden, MLP width of Qwen2.5-Coder-1.5B


def matmul_seconds(dtype: torch.dtype, trainable: bool, repeats: int = 4) -> float:
    """Mean seconds of one (tokens x hidden) @ (hidden x width) product under inference_mode."""
    tokens, hidden, width = SHAPE
    x = torch.randn(tokens, hidden, dtype=dtype)
    w = torch.randn(width, hidden, dtype=dtype).requires_grad_(trainable)
    with torch.inference_mode():
        torch.nn.functional.linear(x, w)
        started = time.perf_counter()
        for _ in range(repeats):
            torch.nn.functional.linear(x, w)
    return (time.perf_counter() - started) / repeats


def sft_steps(keep_bf16: bool, steps: int, dev_lines: int, out: Path) -> dict:
    """Run the demo recipe for `steps` steps in two processes; its run_summary's dtype and step times."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", KEEP_BF16_ENV: "1" if keep_bf16 else "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(REPO / "recipes" / "sft.py"),
           "--config", str(RECIPE), "--max_steps", str(steps), "--eval_subsample", str(dev_lines),
           "--output_dir", str(out), "--disable_tqdm", "true"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sft run failed ({out}):\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "run_summary.json").read_text())
    ends = summary["train_step_end_seconds"]
    return {"dtype": summary["dtype"], "bf16_autocast": summary["bf16"], "step_end_seconds": ends,
            "seconds_per_step": round(ends[-1] / len(ends), 2),
            "seconds_per_step_after_first": round((ends[-1] - ends[0]) / max(len(ends) - 1, 1), 2)}


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per SFT arm")
    parser.add_argument("--dev-lines", type=int, default=2, help="dev lines the recipe labels after training")
    parser.add_argument("--out", type=Path, default=REPO / "evaluation" / "bench_cpu_precision.json")
    args = parser.parse_args()

    result: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
                    "native_bf16": cpu_has_native_bf16()},
        "command": "python evaluation/bench_cpu_precision.py " + " ".join(sys.argv[1:]),
        "matmul_shape": SHAPE, "matmul_seconds": {}, "sft": {},
    }
    torch.set_num_threads(2)
    for dtype in (torch.float32, torch.bfloat16):
        for trainable in (False, True):
            key = f"{str(dtype).removeprefix('torch.')}_{'trainable' if trainable else 'frozen'}"
            result["matmul_seconds"][key] = round(matmul_seconds(dtype, trainable), 4)
            print(f"matmul {key}: {result['matmul_seconds'][key] * 1000:.0f} ms", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for arm, keep in (("float32_fallback", False), ("bf16_as_written", True)):
            result["sft"][arm] = sft_steps(keep, args.steps, args.dev_lines, Path(tmp) / arm)
            print(f"sft {arm}: {result['sft'][arm]}", flush=True)
    sft = result["sft"]
    result["bf16_over_float32_per_step"] = round(sft["bf16_as_written"]["seconds_per_step"]
                                                 / sft["float32_fallback"]["seconds_per_step"], 2)
    print(f"bf16 / float32 seconds per step: {result['bf16_over_float32_per_step']}x "
          f"(native bf16 on this CPU: {result['machine']['native_bf16']})")
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}; rerun: {result['command']}")


if __name__ == "__main__":
    main()
