"""Forward + backward time of packed training batches, three ways of batching the same dialogues:
flat (4 dialogues in one padding-free sequence: the attention kernel gets a block-diagonal mask over the whole
flat length), padded (4 rows, attention masks), one by one (each dialogue alone: plain causal attention).

    OMP_NUM_THREADS=1 python evaluation/bench_packed_batching.py --model Qwen/Qwen2.5-Coder-0.5B-Instruct

Qwen2.5-Coder-0.5B bf16 base with the recipes' LoRA (r 16, top 12 of 24 layers), MELD training dialogues 5-24 in
batches of 4, each mode run twice in turn; prints seconds and trained tokens per second per mode and the command.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time


def recipe_lora_model(model_id: str):
    """The recorded recipes' trainable model: bf16 base, sdpa, LoRA r 16 on the top half of the layers (train mode)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from erc_llm.offline_models import resolve_model

    torch.manual_seed(0)
    path = resolve_model(model_id)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="sdpa")
    n_layers = model.config.num_hidden_layers
    model = get_peft_model(model, LoraConfig(
        r=16, lora_alpha=32, layers_to_transform=list(range(n_layers // 2, n_layers)),
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    model.train()
    return model, tokenizer


def packed_training_data(corpus: str, tokenizer, dialogues=None):
    """The packed training sequences (context only, max_length 1536) of a corpus's training dialogues."""
    from erc_llm.data import load_split
    from erc_llm.prompting import PromptConfig
    from erc_llm.prompting.answer import label_tokens
    from erc_llm.prompting.dataset import build_prompt_builder
    from erc_llm.training.packed import build_packed_train_dataset

    builder = build_prompt_builder(PromptConfig(template="erc_packed.j2", layout="packed", max_line_chars=200),
                                   corpus, None)
    dialogues = load_split(corpus, "train").dialogues if dialogues is None else dialogues
    data, _ = build_packed_train_dataset(dialogues, builder, tokenizer,
                                         label_tokens(tokenizer, builder.label_set.labels), {}, 1536)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="Qwen/Qwen2.5-Coder-0.5B-Instruct")
    parser.add_argument("--corpus", default="meld")
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from erc_llm.data import load_split
    from erc_llm.training.collator import LabelOnlyCollator

    model, tokenizer = recipe_lora_model(args.model)
    dialogues = load_split(args.corpus, "train").dialogues[: 4 * (args.batches + 1)]
    data = packed_training_data(args.corpus, tokenizer, dialogues)
    features = [data[i] for i in range(len(data))]
    batches = [features[i:i + 4] for i in range(4, len(features), 4)]  # the first 4 warm up nothing: skipped

    def step(batch_features, padding_free: bool) -> None:
        batch = LabelOnlyCollator(pad_token_id=tokenizer.pad_token_id, padding_free=padding_free)(batch_features)
        rows, cols, targets = batch.pop("target_rows"), batch.pop("target_cols"), batch.pop("target_ids")
        batch.pop("target_weights"), batch.pop("target_first")
        keep, index = torch.unique(cols, return_inverse=True)
        logits = model(**batch, logits_to_keep=keep, use_cache=False).logits[rows, index].float()
        F.cross_entropy(logits, targets).backward()
        model.zero_grad(set_to_none=True)

    print("| mode | seconds | tokens/s |\n|---|---:|---:|")
    for mode in ("flat", "padded", "one_by_one") * 2:
        started, tokens = time.perf_counter(), 0
        for batch_features in batches:
            tokens += sum(len(f["input_ids"]) for f in batch_features)
            if mode == "one_by_one":
                for feature in batch_features:
                    step([feature], True)
            else:
                step(batch_features, mode == "flat")
        seconds = time.perf_counter() - started
        print(f"| {mode} | {seconds:.1f} | {tokens / seconds:.0f} |", flush=True)
    print("command: python evaluation/bench_packed_batching.py " + shlex.join(sys.argv[1:]))


if __name__ == "__main__":
    main()
