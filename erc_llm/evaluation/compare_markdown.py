"""The Markdown pieces of `erc-llm compare`'s report: number and table formatting, the disagreement examples and
the published-results section."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

from erc_llm.evaluation.published import reference_results_for

_MAX_EXAMPLE_TEXT_CHARS = 160


def percent(value: float) -> str:
    """Format a fraction as a percentage with two decimals."""
    return f"{100.0 * value:.2f}"


def markdown_cell(text: str) -> str:
    """Make free text safe for one markdown table cell."""
    flattened = " ".join(str(text).split())
    if len(flattened) > _MAX_EXAMPLE_TEXT_CHARS:
        flattened = flattened[: _MAX_EXAMPLE_TEXT_CHARS - 1].rstrip() + "…"
    return flattened.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str]) -> str:
    """Render a markdown table; ``align`` holds 'l' or 'r' per column."""
    separators = ["---:" if side == "r" else ":---" for side in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(separators) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def file_slug(name: str) -> str:
    """Filesystem-safe lowercase slug of a system name."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "system"


def stable_rank(key: tuple[str, int]) -> str:
    """Deterministic pseudo-random sort key for an utterance, independent of file order."""
    return hashlib.sha1(f"{key[0]}\x1f{key[1]}".encode()).hexdigest()


def disagreement_section(
    runs: Sequence[Any],  # loaded runs: anything with a `.records` {(dialogue_id, index): PredictionRecord}
    names: Sequence[str],
    keys: Sequence[tuple[str, int]],
    labels: Sequence[str],
    examples_per_class: int,
) -> list[str]:
    """Markdown lines listing utterances on which the systems' predictions differ, a few per gold class."""
    lines = ["## Disagreements", ""]
    if len(runs) < 2:
        return lines + ["Only one system was given, so there is nothing to disagree about.", ""]
    disagreeing = [key for key in keys if len({run.records[key].pred for run in runs}) > 1]
    lines.append(
        f"The systems disagree on {len(disagreeing)} of {len(keys)} scored utterances "
        f"({percent(len(disagreeing) / len(keys))}%)."
    )
    if not disagreeing:
        return lines + [""]
    correct_counts = [
        sum(run.records[key].pred == run.records[key].gold for key in disagreeing) for run in runs
    ]
    lines.append(
        "Correct on those: "
        + "; ".join(f"{name} {count}" for name, count in zip(names, correct_counts))
        + "."
    )
    lines += [
        "",
        (
            f"Up to {examples_per_class} examples per gold class, chosen by a fixed hash of the utterance key "
            "(the same inputs always give the same examples). Correct predictions are in bold."
        ),
        "",
    ]
    by_gold: dict[str, list[tuple[str, int]]] = {label: [] for label in labels}
    for key in disagreeing:
        by_gold[runs[0].records[key].gold].append(key)
    rows = []
    for label in labels:
        chosen = sorted(by_gold[label], key=stable_rank)[:examples_per_class]
        for key in sorted(chosen):
            record = runs[0].records[key]
            predictions = [run.records[key].pred for run in runs]
            rows.append(
                [
                    markdown_cell(f"{key[0]} #{key[1]}"),
                    markdown_cell(record.speaker),
                    markdown_cell(record.text),
                    markdown_cell(label),
                    *[f"**{pred}**" if pred == label else markdown_cell(pred) for pred in predictions],
                ]
            )
    header = ["dialogue #utt", "speaker", "text", "gold", *[markdown_cell(name) for name in names]]
    lines.append(markdown_table(header, rows, ["l"] * len(header)))
    return lines + [""]


def reference_section(corpus: str, split: str) -> list[str]:
    """Markdown lines with published numbers for this corpus/split, marked as not reproduced."""
    lines = [
        "## Published reference numbers (reported by their papers, not reproduced here)",
        "",
        (
            "These weighted-F1 scores are copied from the papers named below, for orientation only. The toolkit "
            "has not re-run these systems; differences in preprocessing, label handling and seeds mean they are "
            "not strictly comparable with the runs above."
        ),
        "",
    ]
    references = reference_results_for(corpus, split)
    if not references:
        return lines + [f"No published reference numbers are recorded for {corpus} / {split}.", ""]
    rows = [[ref.system, ref.setting, f"{ref.weighted_f1:.2f}", ref.source] for ref in references]
    table = markdown_table(["system (as published)", "setting", "weighted-F1 (%)", "source"], rows, "llrl")
    return lines + [table, ""]
