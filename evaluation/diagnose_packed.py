"""Diagnosis of a packed-layout checkpoint (no result for tables): dev weighted-F1 with the model's own inline labels
vs gold inline labels (teacher forcing), the predicted label distribution, and how often a prediction repeats the
previous line's label; plus a check that padding-free batches keep sequences apart.

    python evaluation/diagnose_packed.py --corpus meld --checkpoint runs/qwen2.5-coder-0.5b-meld-packed/checkpoint-104 \\
        --dialogues 20
"""

from __future__ import annotations

import argparse
import collections
import itertools
import random
import shlex
import sys

import torch


def padding_free_check(model) -> float:
    """Max |logit difference| of the second of two packed sequences vs the sequence run alone (use_cache=False)."""
    from erc_llm.training.collator import LabelOnlyCollator

    a, b = list(range(100, 160)), list(range(300, 340))
    batch = LabelOnlyCollator(pad_token_id=0, padding_free=True)(
        [{"input_ids": a, "labels": [-100] * 59 + [a[-1]]}, {"input_ids": b, "labels": [-100] * 39 + [b[-1]]}])
    with torch.no_grad():
        flat = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        alone = model(input_ids=torch.tensor([b]), use_cache=False).logits[0]
    return float((flat[len(a) + len(b) - 2] - alone[len(b) - 2]).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="meld")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--model", default="Qwen/Qwen2.5-Coder-0.5B-Instruct")
    parser.add_argument("--dialogues", type=int, default=20)
    args = parser.parse_args()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from erc_llm.data import load_split
    from erc_llm.evaluation.metrics import compute_metrics, previous_label_repeat_rate
    from erc_llm.labelling.packed import label_dialogues_packed
    from erc_llm.labelling.scorers import HFPackedScorer
    from erc_llm.offline_models import resolve_model
    from erc_llm.prompting import PromptConfig
    from erc_llm.prompting.dataset import build_prompt_builder
    from erc_llm.prompting.packed import header_messages, packed_messages

    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    fp32 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()  # exact arithmetic for the check
    print(f"padding-free batch (fp32), second sequence vs alone: max |diff| {padding_free_check(fp32):.2e}")
    del fp32
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    model = PeftModel.from_pretrained(base, args.checkpoint).eval()
    builder = build_prompt_builder(PromptConfig(template="erc_packed.j2", layout="packed", max_line_chars=200),
                                   args.corpus)
    dev = load_split(args.corpus, "dev").dialogues
    random.Random(0).shuffle(dev)
    dev = dev[: args.dialogues]
    labels = list(builder.label_set.labels)
    scorer = HFPackedScorer(model, tokenizer, labels)
    items = label_dialogues_packed(dev, builder, scorer, progress=False)
    # the labeller returns items in its own (wave) order: align everything by dialogue and position
    own_by_line = {(i.example.dialogue_id, i.example.index): i.pred for i in items}
    gold = [u.label for d in dev for u in d]
    own = [own_by_line[(d.id, r)] for d in dev for r in range(len(d))]
    forced = []
    for d in dev:  # teacher forcing: gold inline labels (a diagnosis only, never a reported score)
        inline = [u.label for u in d]
        head = header_messages(builder, d, None)
        for r in range(len(d)):
            s = scorer.score_streams([(d.id, packed_messages(builder, d, 0, r + 1, inline[:r], None, header=head))])[0]
            forced.append(max(s, key=s.get))
        scorer.end_streams([d.id])
    def by_dialogue(flat: list[str]) -> list[list[str]]:
        starts = list(itertools.accumulate((len(d) for d in dev), initial=0))
        return [flat[a:b] for a, b in zip(starts, starts[1:])]

    print(f"{len(items)} dev lines in {len(dev)} dialogues")
    print(f"own inline labels: W-F1 {100 * compute_metrics(gold, own, labels)['weighted_f1']:.1f}; "
          f"predicted {collections.Counter(own).most_common()}")
    print(f"gold inline labels: W-F1 {100 * compute_metrics(gold, forced, labels)['weighted_f1']:.1f}; "
          f"predicted {collections.Counter(forced).most_common()}")
    print(f"gold {collections.Counter(gold).most_common()}")
    print(f"repeats the previous line's label: own {previous_label_repeat_rate(by_dialogue(own)):.3f}, "
          f"teacher-forced {previous_label_repeat_rate(by_dialogue(forced)):.3f}, "
          f"gold {previous_label_repeat_rate(by_dialogue(gold)):.3f}")
    print("command: " + shlex.join(["python", "evaluation/diagnose_packed.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
