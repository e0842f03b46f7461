"""The SFT recipe as two real processes on CPU (torchrun, gloo): a few LoRA steps on real MELD rows with
SmolLM2-135M, dev weighted-F1 by label scoring, adapter + metrics.json written."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from watched import free_port, run_watched

from erc_llm.precision import cpu_has_native_bf16

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smollm2-135m" / "sft" / "smoke.yaml"

pytestmark = [pytest.mark.slow, pytest.mark.multiproc]


def test_sft_recipe_two_processes(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    env = {
        **os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false", "ERC_LLM_DATA_DIR": str(data_dir),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    # `accelerate launch --cpu --num_processes 2` starts one process; torchrun gives a real world size of 2 (gloo).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(REPO / "recipes" / "sft.py"), "--config", str(SMOKE), "--output_dir", str(out), "--disable_tqdm", "true",
           "--eval_steps", "1"]  # dev scoring between steps too: step timing and line counts must survive it
    started = time.monotonic()
    proc = run_watched(cmd, cwd=tmp_path, env=env, timeout=900)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["world_size"] == 2
    # smoke.yaml: float32 weights, bf16 autocast, which runs only where the CPU has bf16 in hardware
    assert summary["dtype"] == "float32" and summary["bf16"] is cpu_has_native_bf16()
    assert yaml.safe_load((out / "erc_config.yaml").read_text())["bf16"] is True  # the recipe's setting, as asked
    assert Path(summary["provenance"]["library"]) == REPO / "erc_llm"  # the checkout PYTHONPATH names
    assert summary["provenance"]["git_commit"] and summary["provenance"]["library_mismatch"] is None
    assert summary["train_steps"] == 3
    # lines per optimizer step summed over both processes (4 prompts each), and when each step ended (every step,
    # also those after a dev evaluation)
    assert summary["train_step_lines"] == [8, 8, 8]
    ends = summary["train_step_end_seconds"]
    assert len(ends) == 3 and ends == sorted(ends) and ends[0] > 0
    assert summary["train_lines_per_second_after_first_step"] == pytest.approx(16 / (ends[-1] - ends[0]), rel=0.01)

    adapter = load_file(str(out / "adapter_model.safetensors"))
    lora_b = {k: v for k, v in adapter.items() if "lora_B" in k}
    assert lora_b and all(float(v.abs().sum()) > 0 for v in lora_b.values()), "LoRA B starts at 0: weights must move"
    assert (out / "adapter_config.json").exists() and (out / "prompt_template.j2").exists()
    assert (out / "erc_config.yaml").exists()

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "dev" and metrics["system"] == "sft" and metrics["n"] >= 16
    assert 0.0 <= metrics["weighted_f1"] <= 1.0
    assert metrics["extra"]["world_size"] == 2
    dev_lines = (out / "dev" / "predictions.jsonl").read_text().splitlines()
    assert len(dev_lines) == metrics["n"]  # both processes' shares gathered, each utterance once
    state = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())
    assert any("eval_weighted_f1" in entry for entry in state["log_history"])
    print(f"two-process SFT smoke: {elapsed:.0f}s wall")
