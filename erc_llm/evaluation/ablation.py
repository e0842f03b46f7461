"""The ablation table from finished run folders: per row its dev/test metrics, sources and a paired dialogue-bootstrap
difference against the reference row (`ablation.md` + `ablation.json`). Reads run folders only; the runner that
trains the rows is `erc_llm.training.ablate` (`erc-llm ablate`).

`spec` below is anything with the runner's spec fields: `path`, `base_config`, `output_dir`, `rows`, `reference`,
`common`, `description`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from erc_llm.evaluation.bootstrap import ci_description, paired_bootstrap
from erc_llm.evaluation.rundir import read_metrics, read_predictions

REPO = Path(__file__).resolve().parents[2]
SOURCE_FLAGS = (("use_biography", "bio"), ("use_history", "history"), ("use_demonstrations", "demos"))


class AblationSpecError(ValueError):
    """An ablation spec or its rows' run folders are unusable (the message names the file and the key)."""


def _sources(config: Mapping[str, Any]) -> str:
    """The prompt's context sources of a resolved run config, e.g. 'context(2) + bio + history' (per utterance:
    the previous-line window) or 'dialogue so far + history' (packed: every earlier line with its label)."""
    packed = config.get("layout") == "packed"
    parts = ["dialogue so far" if packed else f"context({config.get('past_window', '?')})"]
    parts += [short for flag, short in SOURCE_FLAGS if config.get(flag)]
    return " + ".join(parts)


def _row_config(run_dir: Path) -> dict[str, Any]:
    """The resolved config a row's SFT run saved (erc_config.yaml: every field of the three dataclasses)."""
    return dict(yaml.safe_load((run_dir / "erc_config.yaml").read_text()) or {})


def collect_results(spec: Any, rows: Sequence[str] | None = None, n_resamples: int = 1000,
                    recorded: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One result dict per row (default: all; the reference must be among them): its metrics, run summary, test
    predictions and resolved settings, and the paired dialogue-bootstrap delta vs the reference row on the
    utterances every listed row labelled.

    A row in `recorded` (row -> its result in an earlier table, see `recorded_rows`) is taken from there instead of
    a run folder: its metrics as recorded, its delta recomputed from its recorded test predictions. The gold labels
    come from the rows that have run folders (at least one must)."""
    rows = list(rows or spec.rows)
    recorded = dict(recorded or {})
    if spec.reference not in rows:
        raise AblationSpecError(f"{spec.path}: the reference row {spec.reference!r} has no finished run")
    preds: dict[str, dict[tuple[str, int], str]] = {}
    gold: dict[tuple[str, int], str | None] = {}
    for row in rows:
        if row in recorded:
            preds[row] = _predictions_from_record(recorded[row]["test_predictions"])
            continue
        records = read_predictions(spec.output_dir / row)
        preds[row] = {r.key: r.pred for r in records}
        for r in records:
            if gold.setdefault(r.key, r.gold) != r.gold:
                raise AblationSpecError(f"{spec.output_dir / row}: gold label of {r.key} differs from another row's")
    if not gold:
        raise AblationSpecError(f"{spec.path}: no row has a run folder, so there are no gold labels to score the "
                                "recorded predictions against; run the reference row")
    common_keys = sorted(set(gold).intersection(*(set(p) for p in preds.values())))
    if not common_keys:
        raise AblationSpecError(f"{spec.path}: the rows' test predictions share no utterance")
    gold_labels = [gold[k] for k in common_keys]
    groups = [k[0] for k in common_keys]  # dialogue ids: whole dialogues are resampled
    if any(g is None for g in gold_labels):
        raise AblationSpecError(f"{spec.output_dir}: the rows' predictions lack gold labels")
    reference = [preds[spec.reference][k] for k in common_keys]
    results = []
    for row in rows:
        result = dict(recorded[row]) if row in recorded else _run_result(spec, row, preds[row])
        delta = paired_bootstrap(gold_labels, reference, [preds[row][k] for k in common_keys],
                                 list(result["per_class_f1"]), "weighted_f1", n_resamples=n_resamples, seed=0,
                                 groups=groups)
        result["delta_vs_reference"] = {"common_utterances": len(common_keys), "common_dialogues": len(set(groups)),
                                        "interval": ci_description(n_resamples), **delta}
        results.append(result)
    return results


def _run_result(spec: Any, row: str, preds: Mapping[tuple[str, int], str]) -> dict[str, Any]:
    """A row's result from its run folder: metrics, run summary, resolved settings and test predictions (kept in
    the table's JSON, so the row can be compared again after its run folder is gone)."""
    run_dir = spec.output_dir / row
    metrics = read_metrics(run_dir)
    summary = json.loads((run_dir / "run_summary.json").read_text())
    config = _row_config(run_dir)
    return {
        "row": row, "overrides": spec.rows[row], "sources": _sources(config),
        "class_weighting": config.get("class_weighting", "none"),
        "test_utterances": metrics["n"], "weighted_f1": metrics["weighted_f1"], "macro_f1": metrics["macro_f1"],
        "accuracy": metrics["accuracy"],
        "weighted_f1_without_bias": metrics.get("extra", {}).get("test_weighted_f1_without_bias"),
        "per_class_f1": {label: metrics["per_class"][label]["f1"] for label in metrics["labels"]},
        "dev_weighted_f1": summary.get("dev_weighted_f1"), "train_examples": summary.get("train_examples"),
        "mean_tokens_per_example": summary.get("mean_tokens_per_example"),
        "train_minutes": round(summary.get("train_seconds", 0.0) / 60, 1),
        "train_minutes_all_parts": _minutes_all_parts(summary),
        "total_minutes": round(summary.get("total_seconds", 0.0) / 60, 1),
        "config": config,
        "test_predictions": _predictions_to_record(preds),
    }


def _predictions_to_record(preds: Mapping[tuple[str, int], str]) -> dict[str, list[str | None]]:
    """Test predictions as the table's JSON keeps them: dialogue id -> labels by utterance index (None: a line
    not labelled, e.g. outside a test subsample)."""
    out: dict[str, list[str | None]] = {}
    for (dialogue, index), label in sorted(preds.items()):
        labels = out.setdefault(dialogue, [])
        labels.extend([None] * (index + 1 - len(labels)))
        labels[index] = label
    return out


def _predictions_from_record(record: Mapping[str, Sequence[str | None]]) -> dict[tuple[str, int], str]:
    """The inverse of `_predictions_to_record`."""
    return {(dialogue, i): label for dialogue, labels in record.items() for i, label in enumerate(labels)
            if label is not None}


def recorded_rows(spec: Any, table: Mapping[str, Any], wanted: Mapping[str, Mapping[str, Any]]
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The rows of an earlier table (`ablation.json`) that can stand in for a missing run folder: recorded with
    their test predictions and with the settings the row resolves to today (`wanted`: row -> resolved config).
    Returns (row -> recorded result, row -> why a recorded row cannot stand in)."""
    from erc_llm.training.config import settings_match  # lazy: TRL is slow to import

    usable: dict[str, dict[str, Any]] = {}
    refused: dict[str, str] = {}
    for result in table.get("rows", []):
        row = result.get("row")
        if row not in wanted:
            continue
        if not result.get("test_predictions"):
            refused[row] = ("recorded without its test predictions (a table written before they were kept); the "
                            "table carries its recorded delta until it is run again")
        elif not settings_match(result.get("config") or {}, wanted[row]):
            refused[row] = "recorded with other settings than the row has today"
        else:
            usable[row] = dict(result)
    return usable, refused


# What must be equal for a rerun reference to count as the recorded one (a table without test predictions).
_REPRODUCED_KEYS = ("test_utterances", "weighted_f1", "macro_f1", "accuracy", "per_class_f1")


def carried_rows(spec: Any, results: Sequence[Mapping[str, Any]], table: Mapping[str, Any],
                 rows: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of an earlier table recorded without test predictions (so they cannot be compared again), kept with
    the delta as recorded: against the reference run of that table. Only rows whose overrides and common settings
    are today's; each carried result says in `carried` which reference its delta is against (for a row the earlier
    table carried already, the reference of the table it was measured in), and whether this table's reference
    reproduced that one's test scores exactly."""
    recorded = {r.get("row"): r for r in table.get("rows", [])}
    fresh = next((r for r in results if r["row"] == spec.reference), None)
    old = recorded.get(spec.reference)
    if fresh is None or old is None or table.get("common") != spec.common:
        return []
    reproduced = all(fresh.get(k) == old.get(k) for k in _REPRODUCED_KEYS)
    carried = []
    for row in rows:
        result = recorded.get(row)
        if result is None or result.get("test_predictions") or result.get("overrides") != spec.rows[row]:
            continue
        # a row carried once already keeps the reference its delta was measured against
        before = result.get("carried") or {"reference_weighted_f1": old.get("weighted_f1"), "reference_reproduced": True}
        carried.append({**result, "carried": {
            "reference_weighted_f1": before["reference_weighted_f1"],
            "reference_reproduced": bool(before["reference_reproduced"]) and reproduced,
            "why": "recorded without test predictions: its delta is as recorded, against the reference run of "
                   "the table it was measured in"}})
    return carried


def _minutes_all_parts(summary: dict[str, Any]) -> float | None:
    """Training minutes over every part of a run that was interrupted and resumed (None when a part was not
    timed: resumed from a checkpoint written before checkpoints carried their time)."""
    if "train_seconds_all_parts" in summary:
        seconds = summary["train_seconds_all_parts"]
    else:  # a summary from before the key existed: whole only when the run was not resumed
        seconds = None if summary.get("resumed_from") else summary.get("train_seconds", 0.0)
    return None if seconds is None else round(seconds / 60, 1)


def _train_time(result: dict[str, Any]) -> str:
    """The table's training minutes; a resumed run whose earlier part was not timed says so."""
    if result.get("train_minutes_all_parts") is not None:
        return str(result["train_minutes_all_parts"])
    return f"{result['train_minutes']} + earlier part not timed (resumed)"


def _pct(value: float | None) -> str:
    """A [0, 1] score as a percentage with one decimal ('–' when missing)."""
    return "–" if value is None else f"{100 * value:.1f}"


def _interval_wording(results: Sequence[dict[str, Any]]) -> str:
    """How the table's intervals were computed, as recorded in the results ('95% CI, dialogue bootstrap, ...')."""
    recorded = {r["delta_vs_reference"].get("interval") for r in results} - {None}
    return " / ".join(sorted(recorded)) if recorded else "95% CI (paired bootstrap)"


def render_table(spec: Any, results: Sequence[dict[str, Any]], command: str) -> str:
    """The Markdown ablation report: main table (rows without a finished run say so), per-class F1, rerun command."""
    labels = list(results[0]["per_class_f1"]) if results else []
    lines = [f"# Ablation: {spec.path.name}", ""]
    if spec.description:
        lines += [spec.description, ""]
    lines += [
        f"Base recipe `{spec.base_config.relative_to(REPO) if spec.base_config.is_relative_to(REPO) else spec.base_config}`"
        f" with {json.dumps(spec.common)}; each row adds its own overrides. Test W-F1 deltas against "
        f"`{spec.reference}` are paired, on the utterances both rows labelled, with their "
        f"{_interval_wording(results)} (whole dialogues resampled: predictions within a dialogue are correlated); "
        "a negative delta is a row that hurt.",
        "",
        "| row | prompt sources | class weighting | train ex | prompt tokens | dev W-F1 | **test W-F1** "
        "| Δ vs reference [95% CI] | test W-F1 without dev-fitted bias | macro-F1 | acc | train min |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        d = r["delta_vs_reference"]
        delta = "reference" if r["row"] == spec.reference else (
            f"{100 * d['delta']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]")
        lines.append(
            f"| {r['row']}{' †' if r.get('carried') else ''} | {r['sources']} | {r['class_weighting']} | {r['train_examples']} "
            f"| {r['mean_tokens_per_example']} | {_pct(r['dev_weighted_f1'])} | **{_pct(r['weighted_f1'])}** "
            f"| {delta} | {_pct(r['weighted_f1_without_bias'])} | {_pct(r['macro_f1'])} | {_pct(r['accuracy'])} "
            f"| {_train_time(r)} |")
    done = {r["row"] for r in results}
    for row in spec.rows:
        if row not in done:
            lines.append(f"| {row} | {json.dumps(spec.rows[row])} | | | | | **not run yet** | | | | | |")
    lines += ["", "Per-class test F1:", "", "| row | " + " | ".join(labels) + " |",
              "|---|" + "---:|" * len(labels)]
    for r in results:
        lines.append(f"| {r['row']} | " + " | ".join(_pct(r["per_class_f1"].get(lab)) for lab in labels) + " |")
    lines += ["", f"Test utterances per row: {sorted({r['test_utterances'] for r in results})}; compared on "
              f"{results[0]['delta_vs_reference']['common_utterances']} shared utterances."]
    carried = [r["carried"] for r in results if r.get("carried")]
    if carried:
        earlier = carried[0]
        if earlier["reference_reproduced"]:
            against = ("a reference run that this table's reference reproduced exactly (same test W-F1, macro-F1, "
                       "accuracy and per-class F1)")
        else:
            against = (f"the earlier `{spec.reference}` run (test W-F1 {_pct(earlier['reference_weighted_f1'])}), "
                       f"not this table's rerun of it, which did not reproduce it exactly (the two runs' difference "
                       f"is run-to-run variation of the same recipe)")
        lines += ["", "† Run in an earlier session whose table kept no test predictions: its delta is as recorded "
                  f"then, against {against}. Rows run since keep their test predictions in the JSON, so later rows "
                  "are compared with them directly."]
    lines += ["",
              "Rerun (finished rows are reused):", "", "```bash", command, "```", ""]
    return "\n".join(lines)
