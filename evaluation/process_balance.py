"""How long data-parallel processes wait for each other at optimizer steps: random order vs process-balanced order.

For each corpus's training dialogues (length = characters of a packed dialogue: ~200 of header plus each line's
text and ~20 of speaker and label, a proxy of its tokens), the share of process time spent idle at the end of
each optimizer step, when every process computes its share of the step and then waits for the slowest:
idle = sum over steps (world * max load - sum of loads) / (world * sum over steps of max load).
Random order = accelerate's seeded random sampler (what the trainer used before `balance_processes`);
balanced = `erc_llm.training.sampling.ProcessBalancedSampler` (same steps, dialogues dealt out by length);
grouped = the same with `group_steps_by_length` (similar lengths share a step; this one changes the steps).
Measured speed: `evaluation/bench_sft_packed.py` (arms packed_transcript vs packed_transcript_unbalanced).
`--subsample N`: only the dialogues a run with `--train_subsample N` trains (the training benchmark: 400).

A second table: with the loss a mean over each step's answer lines (`loss_normalizer: step_tokens`), a line weighs
1 / (lines in its step); its mean weight relative to the average line, by the length of its dialogue, in one epoch
(seed 42) of the random order and of the grouped one.

    python evaluation/process_balance.py [--processes 2 --batch 1 --accumulation 2 --seeds 42 0 1 --subsample 400]
"""

from __future__ import annotations

import argparse
import shlex
import sys

from accelerate.data_loader import SeedableRandomSampler

from erc_llm.data.corpora import load_split
from erc_llm.training.data import subsample_dialogues
from erc_llm.training.sampling import ProcessBalancedSampler, process_loads


def idle_share(loads: list[list[int]]) -> float:
    waiting = sum(len(step) * max(step) - sum(step) for step in loads)
    return waiting / (waiting + sum(sum(step) for step in loads))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", nargs="+", default=["meld", "emorynlp"])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--batch", type=int, default=1, help="dialogues per micro-batch per process")
    p.add_argument("--accumulation", type=int, default=2, help="micro-batches per optimizer step per process")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1])
    p.add_argument("--group-steps", type=int, default=16, help="window of group_steps_by_length, in steps")
    p.add_argument("--subsample", type=int, default=None, help="lines, as --train_subsample picks whole dialogues")
    args = p.parse_args()
    shape = (args.processes, args.batch, args.accumulation)
    print(f"{args.processes} processes x {args.batch} dialogue(s) x {args.accumulation} micro-batches per step")
    print("| corpus | dialogues | seed | idle, random order | idle, balanced order | speed-up if compute-bound | "
          f"idle, grouped ({args.group_steps} steps) | speed-up over balanced |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for corpus in args.corpora:
        dialogues = subsample_dialogues(load_split(corpus, "train").dialogues, args.subsample, 0)
        lengths = [200 + sum(len(u.text) + 20 for u in d.utterances) for d in dialogues]
        for seed in args.seeds:
            random_order = list(SeedableRandomSampler(range(len(lengths)), data_seed=seed))
            balanced = ProcessBalancedSampler(lengths, *shape, seed=seed).order(0)
            idle_random = idle_share(process_loads(random_order, lengths, *shape))
            idle_balanced = idle_share(process_loads(balanced, lengths, *shape))
            grouped = ProcessBalancedSampler(lengths, *shape, seed=seed, group_steps=args.group_steps).order(0)
            idle_grouped = idle_share(process_loads(grouped, lengths, *shape))
            print(f"| {corpus} | {len(lengths)} | {seed} | {idle_random:.3f} | {idle_balanced:.3f} | "
                  f"{(1 - idle_balanced) / (1 - idle_random):.2f}x | {idle_grouped:.3f} | "
                  f"{(1 - idle_grouped) / (1 - idle_balanced):.2f}x |")
    print("\nmean weight of a line relative to the average line, loss a mean per step (seed 42)")
    print(f"| corpus | dialogue lines | dialogues | random order | grouped ({args.group_steps} steps) |")
    print("|---|---|---:|---:|---:|")
    for corpus in args.corpora:
        dialogues = subsample_dialogues(load_split(corpus, "train").dialogues, args.subsample, 0)
        lines = [len(d.utterances) for d in dialogues]
        lengths = [200 + sum(len(u.text) + 20 for u in d.utterances) for d in dialogues]
        orders = [list(SeedableRandomSampler(range(len(lines)), data_seed=42)),
                  ProcessBalancedSampler(lengths, *shape, seed=42, group_steps=args.group_steps).order(0)]
        weights = [line_weights(order, lines, args.processes * args.batch * args.accumulation) for order in orders]
        for name, low, high in (("1-3", 1, 3), ("4-8", 4, 8), ("9-14", 9, 14), ("15+", 15, 10 ** 6)):
            members = [i for i, n in enumerate(lines) if low <= n <= high]
            cells = [relative_weight(w, lines, members) for w in weights]
            print(f"| {corpus} | {name} | {len(members)} | {cells[0]:.2f}x | {cells[1]:.2f}x |")
    print("rerun: python evaluation/process_balance.py " + shlex.join(sys.argv[1:]))


def line_weights(order: list[int], lines: list[int], size: int) -> dict[int, float]:
    """Weight of each line of a dialogue in full steps of `order` (1 / lines of its step); dialogues of the short
    last step are left out."""
    weights = {}
    for start in range(0, len(order) // size * size, size):
        step = order[start:start + size]
        for i in step:
            weights[i] = 1.0 / sum(lines[j] for j in step)
    return weights


def relative_weight(weights: dict[int, float], lines: list[int], members: list[int]) -> float:
    """Mean line weight of `members` (dialogues) over the mean weight of all lines."""
    average = sum(weights[i] * lines[i] for i in weights) / sum(lines[i] for i in weights)
    kept = [weights[i] for i in members if i in weights]
    return sum(kept) / len(kept) / average


if __name__ == "__main__":
    main()
