"""Training tokens per second by sequence length: why packed training (long sequences) runs at fewer tokens per
second than the per-utterance recipe (~150-token prompts).

    OMP_NUM_THREADS=2 python evaluation/bench_sequence_length.py --threads 2

Qwen2.5-Coder-0.5B bf16 base with the recipes' LoRA (r 16, top 12 of 24 layers), sdpa attention. Windows of real
packed MELD training tokens (the dialogues' packed chats laid end to end) of each length L, one causal sequence per
micro-batch, label positions every 43 tokens (a packed line's mean length) scored through `logits_to_keep` as the
trainer does; the same number of tokens per length, the lengths run in turn twice. Prints forward and
forward+backward tokens per second per length, the token-weighted length distribution of the recorded recipe's
packed sequences, and the command.
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

    def train_window(ids: list[int]) -> tuple[float, float]:
        """Forward and forward+backward seconds of one causal sequence with a label every LINE_TOKENS tokens."""
        input_ids = torch.tensor([ids])
        cols = torch.arange(LINE_TOKENS - 1, len(ids) - 1, LINE_TOKENS)
        started = time.perf_counter()
        logits = model(input_ids=input_ids, logits_to_keep=cols, use_cache=False).logits[0].float()
        forward = time.perf_counter() - started
        F.cross_entropy(logits, input_ids[0, cols + 1]).backward()
        model.zero_grad(set_to_none=True)
        return forward, time.perf_counter() - started

    train_window(stream[:256])  # warm-up
    results: dict[int, list[tuple[float, float, int]]] = {}
    for _ in range(args.repeats):
        for length in args.lengths:
            forward = total = 0.0
            tokens = 0
            for start in range(0, args.tokens - length + 1, length):
                f, t = train_window(stream[start:start + length])
                forward, total, tokens = forward + f, total + t, tokens + length
            results.setdefault(length, []).append((forward, total, tokens))
            print(f"  L={length}: {tokens / total:.0f} tokens/s forward+backward", flush=True)

    print(f"\n{args.model}, {torch.get_num_threads()} thread(s), {args.tokens} tokens per length, "
          f"{args.repeats} repeat(s)\n")
    print("| sequence length | forward tokens/s | forward+backward tokens/s | vs the shortest |\n|---:|---:|---:|---:|")
    base = None
    for length in args.lengths:
        rates = [tokens / total for _, total, tokens in results[length]]
        forward_rates = [tokens / forward for forward, _, tokens in results[length]]
        rate = statistics.mean(rates)
        base = base or rate
        print(f"| {length} | {statistics.mean(forward_rates):.0f} | {rate:.0f} "
              f"({', '.join(f'{r:.0f}' for r in rates)}) | {rate / base:.2f} |")
    weighted = sum(n * n for n in lengths) / sum(lengths)
    print(f"\nrecorded packed recipe, {args.corpus} training split (max_length 1536): {len(lengths)} sequences, mean "
          f"{statistics.mean(lengths):.0f} tokens, token-weighted mean length {weighted:.0f} "
          f"(a training token sits in a sequence this long on average)")
    print("command: python evaluation/bench_sequence_length.py " + shlex.join(sys.argv[1:]))


if __name__ == "__main__":
    main()
