"""How much emotion history a target sees under the two visibility rules (no model; counts only).

* position rule (per-utterance layout, round-by-round labeller): a target at position r sees its speaker's
  emotions in chronologically earlier dialogues only at positions < r, plus earlier lines of its own dialogue;
* corpus-order rule (packed layout, dialogues labelled in corpus order): every emotion of the speaker in every
  earlier dialogue (the packed chat shows the own dialogue's earlier labels inline).

Prints, per split, the mean number of history entries (window `--window`) by target position for both rules, and
the share of targets whose history is shorter under the position rule, then the command to rerun.

    python evaluation/history_visibility.py --corpus meld emorynlp --split test --window 5
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import defaultdict

from erc_llm.data import SpeakerRegistry, load_split
from erc_llm.prompting.history import EmotionHistory, chronological_keys, history_key


def visibility(corpus: str, split: str, window: int) -> dict:
    """History lengths of every labelled target of a split under both rules (gold labels as the filled history)."""
    registry = SpeakerRegistry.build([load_split(corpus, "train").dialogues])
    dialogues = load_split(corpus, split).dialogues
    keys = chronological_keys(dialogues)
    tracker = EmotionHistory("corpus")
    for d in dialogues:
        for u in d.utterances:
            tracker.add(history_key(registry, u), d.id, keys[u.key], u.label or "?", u.index)
    by_position: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for d in dialogues:
        start = keys[d.utterances[0].key]
        for u in d.utterances:
            speaker = history_key(registry, u)
            position_rule = len(tracker.recent(speaker, d.id, keys[u.key], window, below_position=u.index))
            earlier = len(tracker.recent(speaker, d.id, start, window))
            in_dialogue = sum(1 for v in d.utterances[: u.index] if history_key(registry, v) == speaker)
            by_position[min(u.index, 10)].append((position_rule, min(window, earlier + in_dialogue)))
    rows = {}
    for pos in sorted(by_position):
        pairs = by_position[pos]
        rows[f"{pos}{'+' if pos == 10 else ''}"] = {
            "n": len(pairs), "position_rule_mean": round(sum(a for a, _ in pairs) / len(pairs), 2),
            "corpus_order_mean": round(sum(b for _, b in pairs) / len(pairs), 2)}
    pairs = [p for v in by_position.values() for p in v]
    return {"corpus": corpus, "split": split, "window": window, "targets": len(pairs),
            "shorter_under_position_rule": round(sum(a < b for a, b in pairs) / len(pairs), 4),
            "empty_under_position_rule": round(sum(a == 0 for a, _ in pairs) / len(pairs), 4),
            "empty_under_corpus_order": round(sum(b == 0 for _, b in pairs) / len(pairs), 4),
            "by_position": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", nargs="+", default=["meld", "emorynlp"])
    parser.add_argument("--split", default="test")
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [visibility(c, args.split, args.window) for c in args.corpus]
    if args.json:
        print(json.dumps(results, indent=2))
    for r in results:
        print(f"\n{r['corpus']} {r['split']} ({r['targets']} targets, window {r['window']}): history shorter under the "
              f"position rule for {100 * r['shorter_under_position_rule']:.1f}%; empty: position rule "
              f"{100 * r['empty_under_position_rule']:.1f}%, corpus order {100 * r['empty_under_corpus_order']:.1f}%")
        print("| position | n | mean entries, position rule | mean entries, corpus order |\n|---:|---:|---:|---:|")
        for pos, row in r["by_position"].items():
            print(f"| {pos} | {row['n']} | {row['position_rule_mean']} | {row['corpus_order_mean']} |")
    print("\ncommand: " + shlex.join(["python", "evaluation/history_visibility.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
