"""Where the packed layout's training tokens go, per labelled line: header, line text, label, chat-turn markup.

The training speed-up of the packed layout over the per-utterance recipe is bounded by the ratio of their tokens per
labelled line when both train at the same tokens per second (evaluation/bench_sft_packed.json records the
per-utterance recipe's tokens per utterance). This prints, for a packed recipe's training split tokenised with its
model's chat template:

* header: system prompt, label list, speakers (and their history / biographies), instructions; once per dialogue
  (chunk), so per line it is the header over the dialogue's lines;
* line text: "[i] Speaker: text" as rendered by the template's `line` block;
* label: the inline label word;
* chat-turn markup: everything else (end-of-turn, role headers, newlines the chat template adds per turn);

and the speed-up ceiling at equal tokens per second (per-utterance tokens / packed tokens per line), plus how many
packed tokens per line a given target would allow.

    python evaluation/packed_token_budget.py --config recipes/qwen2.5-coder-0.5b/sft/meld_packed.yaml [--target 5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "evaluation" / "bench_sft_packed.json"
SHORT = 200  # tokens: dialogues this short make small matrices, less efficient per token on the CPU


def token_budget(config: str) -> dict[str, float]:
    """Mean tokens per training line of a packed recipe, split into header / line text / label / markup."""
    from transformers import AutoTokenizer

    from erc_llm.offline_models import resolve_model
    from erc_llm.prompting.packed import dialogue_start_keys, header_messages, line_text, packed_messages, scene_history
    from erc_llm.prompting.templates import chat_ids
    from erc_llm.training.config import parse_sft_args
    from erc_llm.training.steps import load_corpus, make_prompt_builder

    data_args, _, model_args = parse_sft_args(["--config", config])
    splits = load_corpus(data_args)
    builder = make_prompt_builder(data_args, splits)
    if builder.config.layout != "packed":
        sys.exit(f"error: {config} is not a packed recipe (layout: {builder.config.layout})")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model_args.model_name_or_path))

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    history = builder.gold_history(splits.train) if builder.config.use_history else None
    starts = dialogue_start_keys(splits.train)
    total = header = text = label = lines = short = 0
    for dialogue in splits.train:
        gold = [u.label for u in dialogue]
        head = header_messages(builder, dialogue, scene_history(builder, dialogue, history, starts[dialogue.id]))
        length = len(chat_ids(tokenizer, packed_messages(builder, dialogue, 0, len(dialogue), gold, None, header=head),
                              add_generation_prompt=False))
        total += length
        short += length if length < SHORT else 0
        header += sum(count(part) for part in head if part)
        text += sum(count(line_text(builder, u)) for u in dialogue)
        label += sum(count(g) for g in gold)
        lines += len(dialogue)
    return {"lines": lines, "tokens_per_line": total / lines, "header": header / lines, "line_text": text / lines,
            "label": label / lines, "markup": (total - header - text - label) / lines, "short_share": short / total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="recipes/qwen2.5-coder-0.5b/sft/meld_packed.yaml")
    p.add_argument("--target", type=float, default=5.0, help="speed-up target (x the per-utterance recipe)")
    args = p.parse_args()
    b = token_budget(args.config)
    print(f"{args.config}: {b['lines']} training lines, {b['tokens_per_line']:.1f} tokens per line = header "
          f"{b['header']:.1f} + line text {b['line_text']:.1f} + label {b['label']:.1f} + chat-turn markup "
          f"{b['markup']:.1f}; dialogues under {SHORT} tokens hold {100 * b['short_share']:.1f}% of the tokens")
    if BENCH.exists():
        per_utterance = json.loads(BENCH.read_text())["per_utterance"]["mean_tokens_per_utterance"]
        print(f"per-utterance recipe ({BENCH.name}): {per_utterance} tokens per line -> ceiling at equal tokens/s "
              f"{per_utterance / b['tokens_per_line']:.2f}x; {args.target:g}x needs <= "
              f"{per_utterance / args.target:.1f} packed tokens per line")
    print(f"rerun: python evaluation/packed_token_budget.py --config {args.config} --target {args.target:g}")


if __name__ == "__main__":
    main()
