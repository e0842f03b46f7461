"""How often a line's predicted label repeats the previous line's in the same dialogue, against the same rate for
gold labels, and accuracy split by repeat / change: a symptom of a labeller conditioning on its own earlier labels.

    python evaluation/repeat_rates.py runs/qwen2.5-coder-0.5b-emorynlp-packed/predictions.jsonl [more.jsonl ...]
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
from pathlib import Path

from erc_llm.evaluation import read_predictions
from erc_llm.evaluation.metrics import previous_label_repeat_rate


def repeat_rates(path: Path) -> dict[str, float]:
    """Repeat rates and conditional accuracies over every line that has a previous line in its dialogue."""
    lines = sorted(read_predictions(path), key=lambda r: (r.dialogue_id, r.utterance_index))
    dialogues = [list(g) for _, g in itertools.groupby(lines, key=lambda r: r.dialogue_id)]
    pairs = [(a, b) for d in dialogues for a, b in zip(d, d[1:])]
    repeat = [b for a, b in pairs if b.pred == a.pred]
    change = [b for a, b in pairs if b.pred != a.pred]
    return {
        "pred_repeats": previous_label_repeat_rate([[r.pred for r in d] for d in dialogues]),
        "gold_repeats": previous_label_repeat_rate([[r.gold for r in d] for d in dialogues]),
        "accuracy_when_repeating": sum(r.pred == r.gold for r in repeat) / max(len(repeat), 1),
        "accuracy_when_changing": sum(r.pred == r.gold for r in change) / max(len(change), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", nargs="+", type=Path)
    args = parser.parse_args()
    print("| predictions | prediction repeats | gold repeats | accuracy when repeating | accuracy when changing |")
    print("|---|---:|---:|---:|---:|")
    for path in args.predictions:
        r = repeat_rates(path)
        print(f"| {path} | {100 * r['pred_repeats']:.1f}% | {100 * r['gold_repeats']:.1f}% | "
              f"{100 * r['accuracy_when_repeating']:.1f}% | {100 * r['accuracy_when_changing']:.1f}% |")
    print("command: " + shlex.join(["python", "evaluation/repeat_rates.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
