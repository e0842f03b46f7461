"""Training tokens per second by sequence length: why packed training (long sequences) runs at fewer tokens per
second than the per-utterance recipe (~150-token prompts).

    OMP_NUM_THREADS=2 python evaluation/bench_sequence_length.py --threads 2

Qwen2.5-Coder-0.5B bf16 base with the recipes' LoRA (r 16, top 12 of 24 layers), sdpa attention. Windows of real
packed MELD training tokens (the dialogues' packed chats laid end to end) of each length L, one causal sequence per
micro-batch, label positions every 43 tokens (a packed line's mean length) scored through `logits_to_keep` as the
trainer does; the same number of tokens per length, the lengths run in turn twice. One more arm has the
per-utterance recipe's shape: batches of 8 rows of 151 tokens (its mean prompt), one label at each row's end.
Prints forward and forward+backward tokens per second per arm, the token-weighted length distribution of the
recorded recipe's packed sequences, and the command.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

LINE_TOKENS = 43  # mean tokens of a packed MELD line (evaluation/packed_results.md): one label position per line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="Qwen/Qwen2.5-Coder-0.5B-Instruct")
    parser.add_argument("--corpus", default="meld")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 1536])
    parser.add_argument("--tokens", type=int, default=6144, help="tokens trained per length and repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--per-utterance", default="8x151", help="rows x tokens of the per-utterance arm ('' skips)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from bench_packed_batching import packed_training_data, recipe_lora_model  # beside this script

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = recipe_lora_model(args.model)
    data = packed_training_data(args.corpus, tokenizer)
    sequences = [list(ids) for ids in data["input_ids"]]
    lengths = [len(ids) for ids in sequences]
    stream = [t for ids in sequences[:400] for t in ids]
    if len(stream) < args.tokens:
        raise SystemExit(f"only {len(stream)} tokens in the first 400 packed dialogues; lower --tokens")

    def train(ids: list[list[int]], cols: torch.Tensor) -> tuple[float, float]:
        """Forward and forward+backward seconds of one micro-batch (equal-length rows, causal, no padding)."""
        input_ids = torch.tensor(ids)
        started = time.perf_counter()
        logits = model(input_ids=input_ids, logits_to_keep=cols, use_cache=False).logits.float()
        forward = time.perf_counter() - started
        F.cross_entropy(logits.flatten(0, 1), input_ids[:, cols + 1].flatten()).backward()
        model.zero_grad(set_to_none=True)
        return forward, time.perf_counter() - started

    arms = [(f"1 x {n}", 1, n) for n in args.lengths]
    if args.per_utterance:
        rows, width = (int(x) for x in args.per_utterance.split("x"))
        arms.append((f"{rows} x {width} (per-utterance shape)", rows, width))
    train([stream[:256]], torch.tensor([254]))  # warm-up
    results: dict[str, list[tuple[float, float, int]]] = {}
    for _ in range(args.repeats):
        for name, rows, width in arms:
            forward = total = 0.0
            tokens = 0
            # packed: a label every LINE_TOKENS tokens; per utterance: one label, at the row's end
            cols = torch.arange(LINE_TOKENS - 1, width - 1, LINE_TOKENS) if rows == 1 else torch.tensor([width - 2])
            for start in range(0, args.tokens - rows * width + 1, rows * width):
                batch = [stream[start + r * width:start + (r + 1) * width] for r in range(rows)]
                f, t = train(batch, cols)
                forward, total, tokens = forward + f, total + t, tokens + rows * width
            results.setdefault(name, []).append((forward, total, tokens))
            print(f"  {name}: {tokens / total:.0f} tokens/s forward+backward", flush=True)

    print(f"\n{args.model}, {torch.get_num_threads()} thread(s), {args.tokens} tokens per length, "
          f"{args.repeats} repeat(s)\n")
    print("| rows x tokens per micro-batch | forward tokens/s | forward+backward tokens/s (each repeat) "
          "| vs 1 x the shortest |\n|---|---:|---:|---:|")
    base = None
    for name, _, _ in arms:
        rates = [tokens / total for _, total, tokens in results[name]]
        forward_rates = [tokens / forward for forward, _, tokens in results[name]]
        rate = statistics.mean(rates)
        base = base or rate
        print(f"| {name} | {statistics.mean(forward_rates):.0f} | {rate:.0f} "
              f"({', '.join(f'{r:.0f}' for r in rates)}) | {rate / base:.2f} |")
    weighted = sum(n * n for n in lengths) / sum(lengths)
    print(f"\nrecorded packed recipe, {args.corpus} training split (max_length 1536): {len(lengths)} sequences, mean "
          f"{statistics.mean(lengths):.0f} tokens, token-weighted mean length {weighted:.0f} "
          f"(a training token sits in a sequence this long on average)")
    print("command: python evaluation/bench_sequence_length.py " + shlex.join(sys.argv[1:]))


if __name__ == "__main__":
    main()
