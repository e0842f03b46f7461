"""Training throughput of our SFT recipe vs stock TRL `SFTTrainer` defaults, same model and data, one run.

Both train LoRA adapters of SmolLM2-135M-Instruct on the same MELD training prompts (rendered by our prompt
builder) for the same number of steps; tokens/s = prompt+answer tokens of the examples seen / wall time of
`trainer.train()`. Variants, run one after the other in this process (interleaved rounds when --rounds > 1):

* stock: `SFTConfig()` defaults (bf16 autocast, gradient checkpointing, batch 8, full-vocabulary logits at every
  position, TRL's padded collator), a conversational prompt-completion dataset (completion-only loss), LoRA on all
  layers; `use_cpu=True` is the one change needed to run here.
* ours-fp32 / ours-bf16: the recipe's settings (label-only logits, no gradient checkpointing, LoRA on the top
  layers, `--batching` collator), with the frozen base in fp32 or in bf16 (the CPU recipes' `dtype: bfloat16`,
  no autocast; the LoRA adapters stay fp32).

Also times constrained label scoring (prompts/s) with and without the shared-prefix KV cache.

    python evaluation/bench_sft.py --examples 48 --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

from erc_llm.data import MELD_LABELS, SpeakerRegistry, load_split  # noqa: E402
from erc_llm.labelling.scorers import HFLabelScorer  # noqa: E402
from erc_llm.offline_models import resolve_model  # noqa: E402
from erc_llm.prompting import PromptBuilder, PromptConfig, label_tokens  # noqa: E402
from erc_llm.training.collator import LabelOnlyCollator  # noqa: E402
from erc_llm.training.config import ERCModelConfig, ERCSFTConfig  # noqa: E402
from erc_llm.training.data import build_train_dataset, class_weights, subsample_examples  # noqa: E402
from erc_llm.training.steps import lora_config  # noqa: E402
from erc_llm.training.trainer import ERCSFTTrainer  # noqa: E402

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=48, help="MELD train examples (stratified subsample).")
    p.add_argument("--steps", type=int, default=6, help="Optimizer steps per variant (batch 8).")
    p.add_argument("--rounds", type=int, default=1, help="Repeat all variants this many times, interleaved.")
    p.add_argument("--past_window", type=int, default=3)
    p.add_argument("--lora_r", type=int, default=16)
    p.add_argument("--lora_top_layers", type=int, default=12)
    p.add_argument("--batching", default="length_grouped", choices=["length_grouped", "padding_free", "padded"])
    p.add_argument("--variants", default="stock,ours-fp32,ours-bf16")
    p.add_argument("--score_prompts", type=int, default=64, help="Prompts for the label-scoring timing (0: skip).")
    p.add_argument("--out", default="/tmp/erc_bench_sft")
    return p.parse_args()


def load_examples(n: int, past_window: int):
    """The same stratified MELD training prompts for every variant."""
    train = load_split("meld", "train")
    builder = PromptBuilder(PromptConfig(past_window=past_window, max_line_chars=150), MELD_LABELS,
                            SpeakerRegistry.build([train.dialogues]))
    return subsample_examples(builder.training_examples(train.dialogues), n, "stratified", 0)


def fresh_model(path: str, dtype: torch.dtype = torch.float32):
    """A freshly loaded base model (each variant starts from the same weights)."""
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")


def run_stock(path, tokenizer, examples, args) -> float:
    """Stock TRL defaults: prompt-completion conversational data, default SFTConfig; returns train seconds."""
    rows = {"prompt": [e.messages for e in examples],
            "completion": [[{"role": "assistant", "content": e.label}] for e in examples]}
    config = SFTConfig(output_dir=f"{args.out}/stock", use_cpu=True, max_steps=args.steps, report_to="none",
                       save_strategy="no", logging_steps=1000, disable_tqdm=True, dataloader_num_workers=0)
    model_args = ERCModelConfig(model_name_or_path=path, use_peft=True, lora_r=args.lora_r,
                                lora_alpha=2 * args.lora_r, lora_target_modules=TARGETS)
    trainer = SFTTrainer(model=fresh_model(path), args=config, train_dataset=Dataset.from_dict(rows),
                         processing_class=tokenizer, peft_config=lora_config(model_args, None))
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started


def run_ours(path, tokenizer, examples, args, bf16: bool) -> float:
    """Our recipe's trainer and collator; returns train seconds."""
    answer = label_tokens(tokenizer, MELD_LABELS.labels)
    weights = class_weights([e.label for e in examples], "sqrt_inverse")
    dataset, _ = build_train_dataset(examples, tokenizer, answer, weights, max_length=512)
    config = ERCSFTConfig(output_dir=f"{args.out}/ours", use_cpu=True, bf16=False, max_steps=args.steps,
                          per_device_train_batch_size=8, report_to="none", save_strategy="no", eval_strategy="no",
                          logging_steps=1000, disable_tqdm=True, batching=args.batching, dataloader_num_workers=0,
                          load_best_model_at_end=False)
    model = fresh_model(path, torch.bfloat16 if bf16 else torch.float32)
    model_args = ERCModelConfig(model_name_or_path=path, use_peft=True, lora_r=args.lora_r,
                                lora_alpha=2 * args.lora_r, lora_target_modules=TARGETS,
                                lora_top_layers=args.lora_top_layers)
    collator = LabelOnlyCollator(pad_token_id=tokenizer.pad_token_id, padding_free=args.batching == "padding_free")
    builder = PromptBuilder(PromptConfig(), MELD_LABELS)
    trainer = ERCSFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                            data_collator=collator, peft_config=lora_config(model_args, model),
                            builder=builder, eval_dialogues=[])
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started


def time_scoring(path, tokenizer, examples, n: int) -> dict[str, float]:
    """Label-scoring prompts/s with and without the shared-prefix cache (fp32 and bf16 weights)."""
    model = fresh_model(path).eval()
    prompts = [e.messages for e in examples[:n]]
    out = {}
    bf16 = fresh_model(path, torch.bfloat16).eval()
    for name, lm, kwargs in (("fp32", model, {}), ("fp32-no-prefix-cache", model, {"prefix_cache": False}),
                             ("bf16", bf16, {}), ("bf16-no-prefix-cache", bf16, {"prefix_cache": False})):
        scorer = HFLabelScorer(lm, tokenizer, MELD_LABELS.labels, batch_size=32, **kwargs)
        started = time.perf_counter()
        scorer.score(prompts)
        out[name] = round(len(prompts) / (time.perf_counter() - started), 2)
    return out


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = resolve_model(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    examples = load_examples(args.examples, args.past_window)
    answer = label_tokens(tokenizer, MELD_LABELS.labels)
    dataset, stats = build_train_dataset(examples, tokenizer, answer, {}, max_length=None)
    seen = min(args.steps * 8, len(examples))
    tokens_seen = sum(dataset["length"][:seen]) * (args.steps * 8 / seen)  # examples cycle when steps*8 > n
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for variant in args.variants.split(","):
            if variant == "stock":
                seconds = run_stock(path, tokenizer, examples, args)
            else:
                seconds = run_ours(path, tokenizer, examples, args, bf16=variant == "ours-bf16")
            results.setdefault(variant, []).append(round(tokens_seen / seconds, 1))
            print(f"{variant}: {tokens_seen / seconds:.1f} tokens/s ({seconds:.1f}s)", flush=True)
    best = {k: max(v) for k, v in results.items()}
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()} {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads", "load_average_at_end": os.getloadavg(),
        "examples": len(examples), "mean_tokens_per_example": round(stats.mean_length, 1), "steps": args.steps,
        "tokens_per_second": results, "best_tokens_per_second": best,
        "speedup_vs_stock": {k: round(v / best["stock"], 2) for k, v in best.items() if "stock" in best},
        "command": "python " + shlex.join(sys.argv),
    }
    if args.score_prompts:
        report["label_scoring_prompts_per_second"] = time_scoring(path, tokenizer, examples, args.score_prompts)
    print(json.dumps(report, indent=2))
    print("rerun:", report["command"])


if __name__ == "__main__":
    main()
