"""Retrieval benchmark: index build time and per-query latency on a corpus's train/test split.

Reports separately (wall and CPU seconds): embedding the training lines and speaker vectors, building the
FAISS indices (flat, IVF, HNSW over the same vectors), embedding the test lines, the FAISS search alone per
query (one query at a time, as prompts are built, and batched), recall@k of IVF/HNSW against the exact flat
index, and the full per-utterance retrieval (biography + k demonstrations) through `ContextRetriever`.

    python retrieval/bench_retrieval.py --corpus meld            # prints a Markdown report
    python retrieval/bench_retrieval.py --corpus meld --out evaluation/retrieval_benchmark.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from erc_llm.data import SpeakerRegistry, load_split
from erc_llm.prompting.dataset import corpus_label_set
from erc_llm.retrieval import ContextRetriever, RetrievalConfig, RetrievalIndex, VectorIndex
from erc_llm.retrieval.index import demonstration_text


class Clock:
    """Wall and CPU time of a block."""

    def __enter__(self) -> Clock:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def cpu_model() -> str:
    """`lscpu` model name (or the platform's processor string)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def latency_ms(index: VectorIndex, queries: np.ndarray, fetch: int) -> tuple[np.ndarray, float]:
    """Per-query search wall time (ms), one query at a time, and the mean CPU ms per query."""
    times = np.empty(len(queries))
    cpu0 = time.process_time()
    for i in range(len(queries)):
        started = time.perf_counter()
        index.search(queries[i:i + 1], fetch)
        times[i] = (time.perf_counter() - started) * 1000
    return times, (time.process_time() - cpu0) / len(queries) * 1000


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and optionally write) a Markdown report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="meld")
    parser.add_argument("--data-dir")
    parser.add_argument("--embedding-model", default=RetrievalConfig().embedding_model)
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw"])
    parser.add_argument("-k", type=int, default=3, help="demonstrations per utterance")
    parser.add_argument("--out", help="also write the report to this Markdown file")
    args = parser.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])

    load0 = os.getloadavg()
    train = load_split(args.corpus, "train", args.data_dir).dialogues
    test = load_split(args.corpus, "test", args.data_dir).dialogues
    registry = SpeakerRegistry.build([train])
    label_set = corpus_label_set(args.corpus, train)
    config = RetrievalConfig(embedding_model=args.embedding_model)

    with Clock() as build:
        index = RetrievalIndex.build(train, registry, label_set, args.corpus, config)
    timings = index.manifest["timings_s"]
    vectors = index.utterance_vectors
    n_lines, n_distinct = len(index.utterance_rows), len({r["text"] for r in index.utterance_rows})

    retriever = ContextRetriever(index)
    test_texts = [demonstration_text(d, u.index, "line") for d in test for u in d]
    with Clock() as embed_test:
        queries = retriever.encoder.encode(test_texts)
    single = test_texts[:100]
    with Clock() as embed_single:
        for text in single:
            retriever.encoder.encode([text])

    n_test = len(test_texts)
    fetch = 4 * args.k + 16  # what ContextRetriever asks FAISS for before filtering
    # Recall@k by score (duplicate training lines tie exactly, so row ids alone would understate it): the share
    # of an index's top k whose similarity reaches the exact k-th best similarity.
    kth_best = index.utterance_index.search(queries, args.k)[0][:, -1:]
    rows = []
    for kind in args.kinds:
        with Clock() as built:
            vindex = index.utterance_index if kind == "flat" else VectorIndex.build(vectors, kind, config)
        build_s = 0.0 if kind == "flat" else built.wall
        if kind == "flat":
            build_s = timings.get("index_utterances_s", 0.0)
        per_query, cpu_ms = latency_ms(vindex, queries, fetch)
        with Clock() as per_dialogue:  # what ContextRetriever does: one search per dialogue's lines
            start = 0
            for dialogue in test:
                vindex.search(queries[start:start + len(dialogue)], fetch)
                start += len(dialogue)
        with Clock() as batched:
            scores = vindex.search(queries, fetch)[0][:, : args.k]
        recall = float(np.mean(scores >= kth_best - 1e-5))
        rows.append((kind, build_s, per_query, cpu_ms, per_dialogue.wall / n_test * 1000,
                     batched.wall / n_test * 1000, recall))

    with Clock() as warm:
        retriever.warm(test)
    with Clock() as e2e:
        for dialogue in test:
            for utt in dialogue:
                retriever.biography(registry.primary_id(utt), utt, dialogue)
                retriever.demonstrations(utt, dialogue, args.k)
    load1 = os.getloadavg()

    lines = [
        f"# Retrieval benchmark: {args.corpus}",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- machine: {os.cpu_count()}-core CPU, {cpu_model()}; load average {load0[0]:.1f} at start, "
        f"{load1[0]:.1f} at end (other jobs share the cores: CPU seconds are the load-independent cost)",
        f"- command: `{command}`",
        f"- embedding model: {index.embedding_model} ({index.manifest['embedding_dim']}-dim, normalised, "
        f"inner product = cosine); FAISS {__import__('faiss').__version__}, {os.cpu_count()} OpenMP threads "
        f"(1 for searches of fewer than 32 queries)",
        f"- data: {len(train)} train dialogues, {n_lines} labelled train lines ({n_distinct} distinct texts), "
        f"{len(index.speaker_ids)} speakers; {n_test} test lines in {len(test)} dialogues",
        "",
        "## Build (train split)",
        "",
        "| step | wall s | note |",
        "|---|---|---|",
        f"| load encoder | {timings.get('load_encoder_s', 0):.2f} | |",
        f"| biographies (profiles) | {timings.get('biographies_s', 0):.2f} | |",
        f"| embed train lines | {timings.get('embed_utterances_s', 0):.2f} | {n_distinct} distinct texts |",
        f"| embed speaker vectors | {timings.get('embed_speakers_s', 0):.2f} | biography texts, mixed with line centroids |",
        f"| FAISS speaker index | {timings.get('index_speakers_s', 0):.3f} | flat |",
        f"| FAISS utterance index | {timings.get('index_utterances_s', 0):.3f} | flat |",
        f"| **total build** | **{build.wall:.1f}** | CPU {build.cpu:.1f} s; without embedding: "
        f"{build.wall - timings.get('embed_utterances_s', 0) - timings.get('embed_speakers_s', 0) - timings.get('load_encoder_s', 0):.2f} s |",
        "",
        "## Query embedding (test split)",
        "",
        f"- batched: {embed_test.wall:.1f} s wall / {embed_test.cpu:.1f} s CPU for {n_test} lines = "
        f"{embed_test.wall / n_test * 1000:.2f} ms/line",
        f"- one line at a time: {embed_single.wall / len(single) * 1000:.1f} ms/line wall, "
        f"{embed_single.cpu / len(single) * 1000:.1f} ms CPU (first {len(single)} lines)",
        "",
        f"## FAISS search only (k={args.k}; each query fetches {fetch} candidates before filtering)",
        "",
        "| index | build s | one query: mean ms | p50 ms | p95 ms | CPU ms | per-dialogue batch ms/query | "
        "whole split ms/query | recall@k vs flat |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, build_s, per_query, cpu_ms, dialogue_ms, batched_ms, recall in rows:
        lines.append(f"| {kind} | {build_s:.3f} | {per_query.mean():.3f} | {np.percentile(per_query, 50):.3f} | "
                     f"{np.percentile(per_query, 95):.3f} | {cpu_ms:.3f} | {dialogue_ms:.3f} | {batched_ms:.4f} | "
                     f"{recall:.3f} |")
    lines += [
        "",
        "## Per-utterance retrieval through ContextRetriever (flat)",
        "",
        f"- warm (embed the test split's lines and unseen speakers' prefixes): {warm.wall:.1f} s wall, "
        f"{warm.cpu:.1f} s CPU",
        f"- biography + {args.k} demonstrations for all {n_test} test utterances: {e2e.wall:.2f} s wall "
        f"({e2e.cpu:.2f} s CPU) = "
        f"{e2e.wall / n_test * 1000:.3f} ms/utterance (one batched FAISS search per dialogue)",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        from erc_llm.io import atomic_write_text

        atomic_write_text(Path(args.out), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
