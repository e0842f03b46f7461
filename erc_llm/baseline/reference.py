"""Reference points for the baseline benchmark: utterance-only sentence embeddings + logistic regression, and a
one-line summary of a finished baseline run.

    python -m erc_llm.baseline.reference --corpus meld [--run-dir runs/baseline/bench_meld]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from erc_llm.baseline.config import DEFAULT_TEXT_ENCODER
from erc_llm.data.sources import resolve_source
from erc_llm.evaluation import compute_metrics, read_metrics


def utterance_logreg_reference(
    corpus: str, data_dir: str | None = None, encoder: str = DEFAULT_TEXT_ENCODER, seed: int = 42
) -> dict[str, Any]:
    """Train logistic regression on sentence embeddings of the utterance text alone; weighted-F1 on dev and test."""
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression

    from erc_llm.offline_models import resolve_model

    started = time.perf_counter()
    source = resolve_source(corpus, data_dir=data_dir)
    train = source.load("train")
    label_set = source.label_set_for(train)
    labels = list(label_set.labels)
    model = SentenceTransformer(resolve_model(encoder), device="cpu")
    splits = {name: list(source.load(name, label_set=label_set).utterances()) for name in ("train", "dev", "test")}
    embeddings = {
        name: model.encode([u.text for u in utterances], batch_size=128, convert_to_numpy=True)
        for name, utterances in splits.items()
    }
    classifier = LogisticRegression(max_iter=2000, random_state=seed)
    classifier.fit(embeddings["train"], np.asarray([labels.index(u.label) for u in splits["train"]]))
    result: dict[str, Any] = {"system": f"{encoder} utterance embedding + logistic regression"}
    for name in ("dev", "test"):
        predicted = classifier.predict(embeddings[name])
        metrics = compute_metrics([u.label for u in splits[name]], [labels[i] for i in predicted], labels)
        result[name] = {key: metrics[key] for key in ("weighted_f1", "macro_f1", "accuracy", "n")}
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """Dev/test scores, epochs and training time of a finished baseline run directory."""
    run_dir = Path(run_dir)
    summary: dict[str, Any] = {}
    for split in ("dev", "test"):
        if (run_dir / split / "metrics.json").is_file():
            metrics = read_metrics(run_dir / split)
            summary[split] = {key: metrics[key] for key in ("weighted_f1", "macro_f1", "accuracy", "n")}
            summary["extra"] = metrics["extra"]
            summary["command"] = metrics["command"]
    return summary


def main(argv: list[str] | None = None) -> int:
    """Print the reference and (optionally) a run's summary as JSON and as percentages."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--run-dir", default=None, help="A finished baseline run to summarise beside the reference.")
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"corpus": args.corpus}
    if args.run_dir:
        report["baseline"] = run_summary(args.run_dir)
    if not args.skip_reference:
        report["reference"] = utterance_logreg_reference(args.corpus, args.data_dir)
    print(json.dumps(report, indent=2))
    for name in ("baseline", "reference"):
        if name in report:
            scores = report[name]
            print(f"{args.corpus} {name}: " + ", ".join(
                f"{split} weighted-F1 {100 * scores[split]['weighted_f1']:.2f} (n={scores[split]['n']})"
                for split in ("dev", "test") if split in scores
            ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
