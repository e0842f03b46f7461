"""Side-by-side comparison of run directories: ``erc-llm compare RUN_DIR [RUN_DIR ...] --out DIR``.

Every run is re-scored from its ``predictions.jsonl`` on the utterances all runs share, so the numbers in the
report are computed the same way for every system. The report holds overall scores with 95% intervals and
paired differences against the first run, both from a bootstrap over whole dialogues (predictions within a
dialogue are correlated; `erc_llm.evaluation.bootstrap`), per-class F1, row-normalised confusion
matrices, examples where the systems disagree, and - kept apart and clearly labelled - weighted-F1 numbers
that published papers report for the same corpus and split.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from erc_llm.data.sources import resolve_labels
from erc_llm.evaluation.bootstrap import bootstrap_ci, ci_description, paired_bootstrap
from erc_llm.evaluation.compare_markdown import (
    disagreement_section as _disagreement_section,
)
from erc_llm.evaluation.compare_markdown import (
    file_slug as _file_slug,
)
from erc_llm.evaluation.compare_markdown import (
    markdown_cell as _markdown_cell,
)
from erc_llm.evaluation.compare_markdown import (
    markdown_table as _markdown_table,
)
from erc_llm.evaluation.compare_markdown import (
    percent as _percent,
)
from erc_llm.evaluation.compare_markdown import (
    reference_section as _reference_section,
)
from erc_llm.evaluation.compare_plots import plot_confusion as _plot_confusion
from erc_llm.evaluation.compare_plots import plot_per_class_f1 as _plot_per_class_f1
from erc_llm.evaluation.metrics import METRIC_NAMES, compute_metrics
from erc_llm.evaluation.published import REFERENCE_RESULTS, ReferenceResult, reference_results_for
from erc_llm.evaluation.published import normalise_name as _normalise_name
from erc_llm.evaluation.rundir import PredictionRecord, RunFormatError, read_metrics, read_predictions
from erc_llm.io import atomic_write_text

__all__ = [
    "REFERENCE_RESULTS",
    "CompareError",
    "ReferenceResult",
    "compare_runs",
    "reference_results_for",
    "register_cli",
]

REPORT_FILENAME = "report.md"
PER_CLASS_F1_PLOT_FILENAME = "per_class_f1.png"

_METRIC_TITLES = {"weighted_f1": "Weighted-F1", "macro_f1": "Macro-F1", "accuracy": "Accuracy"}
_MAX_EXAMPLE_TEXT_CHARS = 160
_MAX_KEY_EXAMPLES = 5
_PNG_DPI = 120


class CompareError(ValueError):
    """Runs cannot be compared (different corpus/split, utterances, gold labels, or label sets)."""


@dataclass(frozen=True)
class _LoadedRun:
    """One run directory: its provenance from metrics.json and its predictions keyed by utterance."""

    run_dir: Path
    system: str
    corpus: str
    split: str
    recorded_labels: list[str]
    records: dict[tuple[str, int], PredictionRecord]
    key_order: list[tuple[str, int]]


def _load_run(run_dir: Path) -> _LoadedRun:
    """Read a run directory's metrics.json (for provenance) and predictions.jsonl."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    metrics = read_metrics(run_dir)
    records = read_predictions(run_dir)
    if not records:
        raise CompareError(f"run {run_dir} has no predictions")
    return _LoadedRun(
        run_dir=run_dir,
        system=metrics["system"],
        corpus=metrics["corpus"],
        split=metrics["split"],
        recorded_labels=list(metrics.get("labels") or []),
        records={record.key: record for record in records},
        key_order=[record.key for record in records],
    )


def _describe_keys(keys: Sequence[tuple[str, int]]) -> str:
    """Short human-readable list of a few utterance keys."""
    shown = ", ".join(f"{dialogue_id!r}#{index}" for dialogue_id, index in sorted(keys)[:_MAX_KEY_EXAMPLES])
    return shown + (", ..." if len(keys) > _MAX_KEY_EXAMPLES else "")


def _check_runs_comparable(runs: Sequence[_LoadedRun]) -> None:
    """Raise CompareError unless all runs share corpus, split, utterance keys and gold labels."""
    reference = runs[0]
    for run in runs[1:]:
        for field in ("corpus", "split"):
            if _normalise_name(getattr(run, field)) != _normalise_name(getattr(reference, field)):
                raise CompareError(
                    f"runs differ in {field}: {reference.run_dir} has {getattr(reference, field)!r} but "
                    f"{run.run_dir} has {getattr(run, field)!r}"
                )
        only_in_reference = [key for key in reference.key_order if key not in run.records]
        only_in_run = [key for key in run.key_order if key not in reference.records]
        if only_in_reference or only_in_run:
            raise CompareError(
                f"runs {reference.run_dir} and {run.run_dir} do not cover the same utterances "
                f"(keyed by dialogue_id, utterance_index): {len(only_in_reference) + len(only_in_run)} keys "
                f"differ - {len(only_in_reference)} only in the first (e.g. {_describe_keys(only_in_reference)}), "
                f"{len(only_in_run)} only in the second (e.g. {_describe_keys(only_in_run)})"
            )
        gold_mismatches = [
            key for key in reference.key_order if run.records[key].gold != reference.records[key].gold
        ]
        if gold_mismatches:
            first = gold_mismatches[0]
            raise CompareError(
                f"runs {reference.run_dir} and {run.run_dir} disagree on the gold label of "
                f"{len(gold_mismatches)} utterances, e.g. {first[0]!r}#{first[1]}: "
                f"{reference.records[first].gold!r} vs {run.records[first].gold!r}"
            )


def _restrict_to_common_keys(runs: list[_LoadedRun]) -> str:
    """Keep only the utterances every run labelled (in the first run's order); describe what was left out."""
    common = set(runs[0].records)
    for run in runs[1:]:
        common &= set(run.records)
    if not common:
        raise CompareError("the runs share no utterance (keyed by dialogue_id, utterance_index)")
    sizes = ", ".join(f"{run.run_dir}: {len(run.records)}" for run in runs)
    for i, run in enumerate(runs):
        runs[i] = _LoadedRun(
            run_dir=run.run_dir, system=run.system, corpus=run.corpus, split=run.split,
            recorded_labels=run.recorded_labels, records={k: run.records[k] for k in common},
            key_order=[k for k in run.key_order if k in common],
        )
    return f"- Compared on the {len(common)} utterances every run labelled ({sizes})."


def _infer_labels(runs: Sequence[_LoadedRun], keys: Sequence[tuple[str, int]]) -> list[str]:
    """Labels seen in the data: gold labels by descending frequency (ties by name), then predicted-only ones."""
    gold_counts = Counter(runs[0].records[key].gold for key in keys)
    labels = sorted(gold_counts, key=lambda label: (-gold_counts[label], label))
    predicted_only = {run.records[key].pred for run in runs for key in keys} - set(labels)
    return labels + sorted(predicted_only)


def _check_labels_cover(
    runs: Sequence[_LoadedRun], keys: Sequence[tuple[str, int]], labels: Sequence[str]
) -> None:
    """Raise CompareError naming the run and utterance of the first gold/pred outside ``labels``."""
    label_set = set(labels)
    for run in runs:
        for key in keys:
            record = run.records[key]
            for role, value in (("gold", record.gold), ("pred", record.pred)):
                if value not in label_set:
                    raise CompareError(
                        f"{run.run_dir}: utterance {key[0]!r}#{key[1]} has {role} {value!r}, which is not one "
                        f"of the labels {list(labels)}"
                    )


def _display_names(runs: Sequence[_LoadedRun]) -> list[str]:
    """System names for the report, made unique by appending the run directory name where needed."""
    counts = Counter(run.system for run in runs)
    names = [run.system if counts[run.system] == 1 else f"{run.system} ({run.run_dir.name})" for run in runs]
    seen: Counter[str] = Counter()
    unique_names = []
    for name in names:
        seen[name] += 1
        unique_names.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return unique_names


def compare_runs(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    labels: Sequence[str] | None = None,
    labels_from_run: bool = False,
    n_resamples: int = 1000,
    seed: int = 0,
    examples_per_class: int = 3,
    figures: bool = True,
    common_only: bool = False,
) -> Path:
    """Compare run directories and write ``out_dir/report.md`` plus PNG figures; return the report path.

    Label set: ``labels`` if given; else, with ``labels_from_run``, the ``labels`` recorded in the first run's
    metrics.json; else the labels seen in the data (gold by frequency, then predicted-only). Utterances whose
    gold is null are left out of every score. ``n_resamples=0`` turns the bootstrap off; ``figures=False``
    writes the markdown only (no matplotlib needed). Raises CompareError
    when the runs cover different corpora, splits, utterances or gold labels; with ``common_only`` runs that
    labelled different subsets are compared on the utterances they share (the report says how many each had).
    """
    if not run_dirs:
        raise CompareError("give at least one run directory")
    if n_resamples < 0:
        raise ValueError(f"n_resamples must be >= 0, got {n_resamples}")
    if examples_per_class < 0:
        raise ValueError(f"examples_per_class must be >= 0, got {examples_per_class}")
    runs = [_load_run(Path(run_dir)) for run_dir in run_dirs]
    coverage_note = _restrict_to_common_keys(runs) if common_only else None
    _check_runs_comparable(runs)
    first = runs[0]
    scored_keys = [key for key in first.key_order if first.records[key].gold is not None]
    n_without_gold = len(first.key_order) - len(scored_keys)
    if not scored_keys:
        raise CompareError(
            f"none of the {len(first.key_order)} utterances in {first.run_dir} has a gold label"
        )
    if labels is not None:
        label_list = list(labels)
        label_source = "given on the command line"
    elif labels_from_run:
        if not first.recorded_labels:
            raise CompareError(f"{first.run_dir}/metrics.json records no labels")
        label_list = first.recorded_labels
        label_source = f"recorded in {first.run_dir}/metrics.json"
    else:
        label_list = _infer_labels(runs, scored_keys)
        label_source = "inferred from the predictions: gold by frequency, then predicted-only"
    _check_labels_cover(runs, scored_keys, label_list)

    names = _display_names(runs)
    gold = [first.records[key].gold for key in scored_keys]
    groups = [key[0] for key in scored_keys]  # dialogue ids: the bootstrap resamples whole dialogues
    predictions = [[run.records[key].pred for key in scored_keys] for run in runs]
    metrics = [compute_metrics(gold, system_predictions, label_list) for system_predictions in predictions]

    output = Path(out_dir)
    output.mkdir(parents=True, exist_ok=True)
    corpus, split = first.corpus, first.split
    lines = [
        f"# ERC system comparison: {_markdown_cell(corpus)} / {_markdown_cell(split)}",
        "",
        f"- Utterances scored: {len(scored_keys)}"
        + (f" ({n_without_gold} without a gold label were skipped)" if n_without_gold else ""),
        *([coverage_note] if coverage_note else []),
        f"- Labels: {', '.join(label_list)} ({len(label_list)}; {label_source})",
        "- Scores are in percent, recomputed from each run's predictions.jsonl on the same utterances.",
        (
            f"- Intervals: {ci_description(n_resamples)} (percentile; each resample draws {len(set(groups))} "
            f"dialogues with replacement and scores all their utterances), seed {seed}."
            if n_resamples
            else "- Bootstrap intervals are turned off (--bootstrap 0)."
        ),
        "",
        "## Overall scores",
        "",
    ]
    rows = []
    for name, run, system_predictions, system_metrics in zip(names, runs, predictions, metrics):
        cells = [_markdown_cell(name), _markdown_cell(str(run.run_dir))]
        for metric in METRIC_NAMES:
            value = _percent(system_metrics[metric])
            if n_resamples:
                interval = bootstrap_ci(gold, system_predictions, label_list, metric, n_resamples, seed,
                                        groups=groups)
                value += f" [{_percent(interval['low'])}, {_percent(interval['high'])}]"
            cells.append(value)
        rows.append(cells)
    header = [
        "system",
        "run",
        *[
            f"{_METRIC_TITLES[metric]} (95% CI)" if n_resamples else _METRIC_TITLES[metric]
            for metric in METRIC_NAMES
        ],
    ]
    lines += [_markdown_table(header, rows, "llrrr"), ""]

    if len(runs) > 1:
        lines += [f"## Weighted-F1 difference vs {_markdown_cell(names[0])}", ""]
        if n_resamples:
            lines += [
                (
                    "Paired dialogue bootstrap: each resample scores both systems on the same resampled dialogues. "
                    "Δ = system − "
                    f"{_markdown_cell(names[0])}; p is one-sided, the share of resamples with Δ ≤ 0."
                ),
                "",
            ]
            rows = []
            for name, system_predictions in zip(names[1:], predictions[1:]):
                paired = paired_bootstrap(
                    gold, predictions[0], system_predictions, label_list, "weighted_f1", n_resamples, seed,
                    groups=groups,
                )
                rows.append(
                    [
                        _markdown_cell(name),
                        f"{100.0 * paired['delta']:+.2f}",
                        f"[{100.0 * paired['low']:+.2f}, {100.0 * paired['high']:+.2f}]",
                        f"{paired['p_value']:.3f}",
                    ]
                )
            lines += [_markdown_table(["system", "Δ weighted-F1", "95% CI (dialogue bootstrap)", "p (Δ ≤ 0)"], rows,
                                      "lrrr"), ""]
        else:
            rows = [
                [_markdown_cell(name), f"{100.0 * (m['weighted_f1'] - metrics[0]['weighted_f1']):+.2f}"]
                for name, m in zip(names[1:], metrics[1:])
            ]
            lines += [_markdown_table(["system", "Δ weighted-F1"], rows, "lr"), ""]

    supports = [metrics[0]["per_class"][label]["support"] for label in label_list]
    f1_by_system = np.array([[m["per_class"][label]["f1"] for label in label_list] for m in metrics])
    lines += ["## Per-class F1", ""]
    rows = []
    for label_index, label in enumerate(label_list):
        best = f1_by_system[:, label_index].max()
        cells = [_markdown_cell(label), str(supports[label_index])]
        for system_index in range(len(runs)):
            value = f1_by_system[system_index, label_index]
            formatted = _percent(value)
            cells.append(f"**{formatted}**" if len(runs) > 1 and value == best and best > 0 else formatted)
        rows.append(cells)
    lines += [
        _markdown_table(
            ["label", "support", *[_markdown_cell(name) for name in names]], rows, "lr" + "r" * len(runs)
        )
    ]
    lines += ["", "Best per label in bold.", ""]
    if figures:
        lines += [f"![Per-class F1]({PER_CLASS_F1_PLOT_FILENAME})", ""]
        _plot_per_class_f1(
            output / PER_CLASS_F1_PLOT_FILENAME,
            label_list,
            supports,
            names,
            f1_by_system,
            f"Per-class F1 - {corpus} / {split}",
        )

    confusion_note = (
        "Rows are gold labels, columns predictions; colour is the share of the gold row, each cell shows "
        "count and row share."
    )
    lines += ["## Confusion matrices", "", confusion_note if figures else "Figures were not rendered.", ""]
    for system_index, (name, system_metrics) in enumerate(zip(names, metrics), start=1):
        if not figures:
            continue
        plot_name = f"confusion_{system_index}_{_file_slug(name)}.png"
        _plot_confusion(
            output / plot_name,
            label_list,
            np.array(system_metrics["confusion"]),
            f"{name} - weighted-F1 {_percent(system_metrics['weighted_f1'])}",
        )
        lines += [
            f"### {_markdown_cell(name)}",
            "",
            f"![Confusion matrix of {_markdown_cell(name)}]({plot_name})",
            "",
        ]

    lines += _disagreement_section(runs, names, scored_keys, label_list, examples_per_class)
    lines += _reference_section(corpus, split)
    return atomic_write_text(output / REPORT_FILENAME, "\n".join(lines).rstrip() + "\n")


def _run_compare_command(args: argparse.Namespace) -> int:
    """Handle ``erc-llm compare``: write the report, print its path, return an exit status."""
    try:
        labels = list(resolve_labels(args.labels).labels) if args.labels else None  # a name, a,b,c or a file
        report_path = compare_runs(
            args.run_dirs,
            args.out,
            labels=labels,
            labels_from_run=args.labels_from_run,
            n_resamples=args.bootstrap,
            seed=args.seed,
            examples_per_class=args.examples_per_class,
            figures=not args.no_figures,
            common_only=args.common_only,
        )
    except (CompareError, RunFormatError, FileNotFoundError, ValueError) as error:
        print(f"erc-llm compare: error: {error}", file=sys.stderr)
        return 2
    print(report_path)
    return 0


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``compare`` sub-command to an ``argparse`` sub-parser collection; handler is ``args.func``."""
    parser = subparsers.add_parser(
        "compare",
        help="compare run directories and write a markdown report with figures",
        description="Re-score run directories (same corpus, split and utterances) and write DIR/report.md "
        "with bootstrap confidence intervals, per-class F1, confusion matrices, disagreement examples "
        "and published reference numbers.",
    )
    parser.add_argument(
        "run_dirs",
        nargs="+",
        type=Path,
        metavar="RUN_DIR",
        help="run directories with predictions.jsonl and metrics.json; the first is the baseline",
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="directory for report.md and PNGs"
    )
    label_choice = parser.add_mutually_exclusive_group()
    label_choice.add_argument(
        "--labels-from-run",
        action="store_true",
        help="use the label list recorded in the first run's metrics.json "
        "(default: labels seen in the predictions)",
    )
    label_choice.add_argument(
        "--labels", default=None, metavar="A,B,...", help="label list in report order: a,b,c, a known set (meld, emorynlp, iemocap) or a file"
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for confidence intervals (0 turns them off; default 1000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap random seed (default 0)")
    parser.add_argument(
        "--common-only",
        action="store_true",
        help="compare on the utterances all runs labelled (e.g. an LLM run on a test slice vs a full baseline)",
    )
    parser.add_argument(
        "--examples-per-class",
        type=int,
        default=3,
        metavar="K",
        help="disagreement examples shown per gold label (default 3)",
    )
    parser.add_argument(
        "--no-figures", action="store_true", help="write report.md only, without the PNG figures"
    )
    parser.set_defaults(func=_run_compare_command)
    return parser
