"""Per-token cost of one LoRA forward+backward at different micro-batch shapes (one thread, bf16 frozen base).

The recipe's model and adapters (Qwen2.5-Coder-0.5B-Instruct materialised by `erc-llm models fetch`, LoRA r=16 on all
projections of the top 12 of 24 layers), random token ids, logits kept at every 10th position, one warm-up pass,
then the mean of 3 passes per shape. Tells whether packed training is slower per token because of matrix shape.

    erc-llm models fetch Qwen/Qwen2.5-Coder-0.5B-Instruct
    python evaluation/bench_lora_shapes.py
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

MODEL = Path.home() / ".cache" / "erc_llm" / "models" / "Qwen2.5-Coder-0.5B-Instruct"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHAPES = {  # name: (batch, length, restart positions after this many tokens or None)
    "1x250": (1, 250, None), "1x500": (1, 500, None), "4x150": (4, 150, None), "1x1000": (1, 1000, None),
    "two dialogues of 250, flat, restarting positions": (1, 500, 250),
}
REPEATS = 3


def step(model, batch: int, length: int, restart: int | None) -> None:
    ids = torch.randint(100, 20000, (batch, length))
    extra = {} if restart is None else {"position_ids": (torch.arange(length) % restart)[None]}
    out = model(input_ids=ids, logits_to_keep=torch.arange(0, length, 10), use_cache=False, **extra)
    out.logits.float().logsumexp(-1).mean().backward()


def main() -> None:
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS,
                                             layers_to_transform=list(range(12, 24))))
    model.train()
    for name, (batch, length, restart) in SHAPES.items():
        step(model, batch, length, restart)  # warm-up
        started = time.perf_counter()
        for _ in range(REPEATS):
            step(model, batch, length, restart)
        seconds = (time.perf_counter() - started) / REPEATS
        print(f"{name}: {seconds:.2f} s per forward+backward, {batch * length / seconds:.0f} tokens/s", flush=True)
    print("rerun: python evaluation/bench_lora_shapes.py")


if __name__ == "__main__":
    main()
