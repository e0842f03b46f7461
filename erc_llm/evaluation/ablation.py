"""Ablation runner (`erc-llm ablate`): one SFT run per row of a spec, then one table of test results.

A spec is a YAML file (see `recipes/smollm2-135m/ablation/`)::

    base_config: recipes/smollm2-135m/sft/context_weighted.yaml   # an SFT recipe, relative to the repo
    output_dir: runs/ablation/meld
    parallel: 2                 # runs at once; each gets cpu_count // parallel threads
    reference: context          # the row every other row is compared with (paired dialogue bootstrap)
    common: {train_subsample: 400, test_subsample: 500}            # overrides for every row
    rows:
      context: {}
      +biography: {use_biography: true}

Every row runs `recipes/sft.py --config base_config` with `common` then the row's overrides as CLI flags, into
`<output_dir>/<row>/`. A row whose run folder holds `metrics.json` written with the same arguments is reused, so
an interrupted ablation resumes with the same command; a half-written row is rerun from scratch. The table
(`ablation.md` + `ablation.json`) reports rows that hurt as plainly as rows that help.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from erc_llm.evaluation.bootstrap import ci_description, paired_bootstrap
from erc_llm.evaluation.rundir import read_metrics, read_predictions
from erc_llm.io import atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parents[2]
SFT_SCRIPT = REPO / "recipes" / "sft.py"
ROW_ARGS_FILE = "ablation_row.json"
SPEC_KEYS = {"base_config", "output_dir", "parallel", "reference", "common", "rows", "description"}
# Prompt switches shown in the table's "sources" column, in prompt order.
SOURCE_FLAGS = (("use_biography", "bio"), ("use_history", "history"), ("use_demonstrations", "demos"))


class AblationSpecError(ValueError):
    """An ablation spec that cannot run; the message names the file and the key."""


@dataclass
class AblationSpec:
    """A parsed ablation spec (see the module docstring)."""

    path: Path
    base_config: Path
    output_dir: Path
    rows: dict[str, dict[str, Any]]
    reference: str
    common: dict[str, Any] = field(default_factory=dict)
    parallel: int = 1
    description: str = ""

    def row_args(self, row: str) -> list[str]:
        """The sft.py argument list of one row (base config, common overrides, row overrides, output dir)."""
        merged = {**self.common, **self.rows[row], "output_dir": str(self.output_dir / row)}
        base = self.base_config.relative_to(REPO) if self.base_config.is_relative_to(REPO) else self.base_config
        args = ["--config", str(base)]  # sft.py runs with the repo as working directory
        for key, value in merged.items():
            args += [f"--{key}", _flag_value(value)]
        return args


def _flag_value(value: Any) -> str:
    """A YAML value as the string TrlParser reads back (booleans as true/false, null as None)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "None"
    if isinstance(value, list | dict):
        raise TypeError(f"list/dict overrides are not supported on the command line: {value!r}")
    return str(value)


def _resolve(path: str, spec_path: Path) -> Path:
    """A path from a spec: absolute, else relative to the repo (recipes are run from there), else to the spec."""
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    for root in (REPO, spec_path.parent):
        if (root / candidate).exists():
            return root / candidate
    return REPO / candidate


def load_spec(path: str | os.PathLike[str], output_dir: str | None = None, validate: bool = True) -> AblationSpec:
    """Read and check an ablation spec; with `validate`, every row's SFT arguments are parsed strictly."""
    spec_path = Path(path)
    try:
        raw = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AblationSpecError(f"{spec_path}: cannot read ablation spec ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise AblationSpecError(f"{spec_path}: invalid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise AblationSpecError(f"{spec_path}: an ablation spec is a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - SPEC_KEYS)
    if unknown:
        raise AblationSpecError(f"{spec_path}: unknown key(s) {unknown}; allowed: {sorted(SPEC_KEYS)}")
    for key in ("base_config", "output_dir", "rows", "reference"):
        if key not in raw:
            raise AblationSpecError(f"{spec_path}: missing required key {key!r}")
    rows = raw["rows"]
    if not isinstance(rows, dict) or not rows:
        raise AblationSpecError(f"{spec_path}: 'rows' must be a non-empty mapping of row name -> overrides")
    for name, overrides in rows.items():
        if overrides is None:
            rows[name] = {}
        elif not isinstance(overrides, dict):
            raise AblationSpecError(f"{spec_path}: row {name!r} must map to overrides, got {overrides!r}")
        if not str(name) or "/" in str(name) or str(name).startswith("."):
            raise AblationSpecError(f"{spec_path}: row name {name!r} is not a usable folder name")
        if "output_dir" in (rows[name] or {}):
            raise AblationSpecError(f"{spec_path}: row {name!r} sets output_dir; rows always run in <output_dir>/<row>")
    common = raw.get("common") or {}
    if not isinstance(common, dict) or "output_dir" in common:
        raise AblationSpecError(f"{spec_path}: 'common' must be a mapping of SFT overrides without output_dir")
    if raw["reference"] not in rows:
        raise AblationSpecError(f"{spec_path}: reference {raw['reference']!r} is not a row ({sorted(rows)})")
    parallel = raw.get("parallel", 1)
    if not isinstance(parallel, int) or parallel < 1:
        raise AblationSpecError(f"{spec_path}: 'parallel' must be an integer >= 1, got {parallel!r}")
    base_config = _resolve(str(raw["base_config"]), spec_path)
    if not base_config.is_file():
        raise AblationSpecError(f"{spec_path}: base_config {raw['base_config']!r} not found")
    spec = AblationSpec(
        path=spec_path, base_config=base_config, rows={str(k): dict(v or {}) for k, v in rows.items()},
        reference=str(raw["reference"]), common=dict(common), parallel=parallel,
        output_dir=Path(output_dir or raw["output_dir"]), description=str(raw.get("description") or ""),
    )
    if validate:
        validate_rows(spec)
    return spec


def validate_rows(spec: AblationSpec) -> None:
    """Parse every row's arguments as recipes/sft.py would (unknown keys and bad values are errors)."""
    from erc_llm.training.config import parse_sft_args

    for row in spec.rows:
        try:
            args = spec.row_args(row)
            parse_sft_args(args)
        except (Exception, SystemExit) as exc:  # TrlParser exits on bad flags; name the row instead
            raise AblationSpecError(f"{spec.path}: row {row!r} does not parse as an SFT recipe: {exc}") from exc


def _fingerprint(args: Sequence[str]) -> str:
    """Stable id of a row's arguments (a finished row is reused only when they match)."""
    return hashlib.sha256(json.dumps(list(args)).encode()).hexdigest()[:16]


def row_is_finished(spec: AblationSpec, row: str) -> bool:
    """True when the row's folder holds metrics.json from a run with exactly this row's arguments."""
    run_dir = spec.output_dir / row
    marker = run_dir / ROW_ARGS_FILE
    if not (run_dir / "metrics.json").is_file() or not marker.is_file():
        return False
    return json.loads(marker.read_text()).get("fingerprint") == _fingerprint(spec.row_args(row))


def _launch(spec: AblationSpec, row: str, threads: int) -> tuple[subprocess.Popen, Any]:
    """Start one row's SFT run (a fresh folder; its log under <output_dir>/logs)."""
    run_dir = spec.output_dir / row
    if run_dir.exists():
        shutil.rmtree(run_dir)  # unfinished or run with other arguments: start it over
    run_dir.mkdir(parents=True)
    args = spec.row_args(row)
    atomic_write_json(run_dir / ROW_ARGS_FILE, {"fingerprint": _fingerprint(args), "args": args})
    log_path = spec.output_dir / "logs" / f"{row}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    log = open(log_path, "wb")  # noqa: SIM115 - closed when the process ends
    process = subprocess.Popen([sys.executable, str(SFT_SCRIPT), *args], stdout=log, stderr=subprocess.STDOUT,
                               env=env, cwd=REPO)
    return process, log


def run_rows(spec: AblationSpec, only: Sequence[str] | None = None) -> dict[str, float]:
    """Run every unfinished row, `spec.parallel` at a time; return each launched row's wall seconds."""
    rows = [r for r in spec.rows if not only or r in only]
    todo = [r for r in rows if not row_is_finished(spec, r)]
    for row in rows:
        if row not in todo:
            print(f"  {row}: finished earlier, reused", flush=True)
    threads = max(1, (os.cpu_count() or 1) // spec.parallel)
    running: dict[str, tuple[subprocess.Popen, Any, float]] = {}
    walls: dict[str, float] = {}
    failed: list[str] = []
    while todo or running:
        while todo and len(running) < spec.parallel:
            row = todo.pop(0)
            process, log = _launch(spec, row, threads)
            running[row] = (process, log, time.perf_counter())
            print(f"  {row}: started ({threads} thread(s)); log {spec.output_dir / 'logs' / (row + '.log')}", flush=True)
        time.sleep(2.0)
        for row, (process, log, started) in list(running.items()):
            if process.poll() is None:
                continue
            log.close()
            del running[row]
            walls[row] = time.perf_counter() - started
            status = "done" if process.returncode == 0 else f"FAILED (exit {process.returncode})"
            print(f"  {row}: {status} in {walls[row] / 60:.1f} min", flush=True)
            if process.returncode != 0:
                failed.append(row)
    if failed:
        logs = ", ".join(str(spec.output_dir / "logs" / f"{r}.log") for r in failed)
        raise RuntimeError(f"ablation row(s) {failed} failed; see {logs}")
    return walls


def _sources(config: Mapping[str, Any]) -> str:
    """The prompt's context sources of a resolved run config, e.g. 'context(2) + bio + history'."""
    parts = [f"context({config.get('past_window', '?')})"]
    parts += [short for flag, short in SOURCE_FLAGS if config.get(flag)]
    return " + ".join(parts)


def _row_config(run_dir: Path) -> dict[str, Any]:
    """The resolved config a row's SFT run saved (erc_config.yaml: every field of the three dataclasses)."""
    return dict(yaml.safe_load((run_dir / "erc_config.yaml").read_text()) or {})


def collect_results(spec: AblationSpec, rows: Sequence[str] | None = None,
                    n_resamples: int = 1000) -> list[dict[str, Any]]:
    """One result dict per row (default: all; the reference must be among them): its metrics, run summary, and
    the paired dialogue-bootstrap delta vs the reference row on the utterances every listed row labelled."""
    rows = list(rows or spec.rows)
    if spec.reference not in rows:
        raise AblationSpecError(f"{spec.path}: the reference row {spec.reference!r} has no finished run")
    preds = {row: {r.key: r for r in read_predictions(spec.output_dir / row)} for row in rows}
    common_keys = sorted(set.intersection(*(set(p) for p in preds.values())))
    if not common_keys:
        raise AblationSpecError(f"{spec.path}: the rows' test predictions share no utterance")
    reference = preds[spec.reference]
    gold = [reference[k].gold for k in common_keys]
    groups = [k[0] for k in common_keys]  # dialogue ids: whole dialogues are resampled
    if any(g is None for g in gold):
        raise AblationSpecError(f"{spec.output_dir / spec.reference}: predictions lack gold labels")
    results = []
    for row in rows:
        run_dir = spec.output_dir / row
        metrics = read_metrics(run_dir)
        summary = json.loads((run_dir / "run_summary.json").read_text())
        config = _row_config(run_dir)
        labels = list(metrics["labels"])
        delta = paired_bootstrap(gold, [reference[k].pred for k in common_keys], [preds[row][k].pred for k in common_keys],
                                 labels, "weighted_f1", n_resamples=n_resamples, seed=0, groups=groups)
        results.append({
            "row": row, "overrides": spec.rows[row], "sources": _sources(config),
            "class_weighting": config.get("class_weighting", "none"),
            "test_utterances": metrics["n"], "weighted_f1": metrics["weighted_f1"], "macro_f1": metrics["macro_f1"],
            "accuracy": metrics["accuracy"],
            "weighted_f1_without_bias": metrics.get("extra", {}).get("test_weighted_f1_without_bias"),
            "per_class_f1": {label: scores["f1"] for label, scores in metrics["per_class"].items()},
            "dev_weighted_f1": summary.get("dev_weighted_f1"), "train_examples": summary.get("train_examples"),
            "mean_tokens_per_example": summary.get("mean_tokens_per_example"),
            "train_minutes": round(summary.get("train_seconds", 0.0) / 60, 1),
            "total_minutes": round(summary.get("total_seconds", 0.0) / 60, 1),
            "delta_vs_reference": {"common_utterances": len(common_keys), "common_dialogues": len(set(groups)),
                                   "interval": ci_description(n_resamples), **delta},
        })
    return results


def _pct(value: float | None) -> str:
    """A [0, 1] score as a percentage with one decimal ('–' when missing)."""
    return "–" if value is None else f"{100 * value:.1f}"


def _interval_wording(results: Sequence[dict[str, Any]]) -> str:
    """How the table's intervals were computed, as recorded in the results ('95% CI, dialogue bootstrap, ...')."""
    recorded = {r["delta_vs_reference"].get("interval") for r in results} - {None}
    return " / ".join(sorted(recorded)) if recorded else "95% CI (paired bootstrap)"


def render_table(spec: AblationSpec, results: Sequence[dict[str, Any]], command: str) -> str:
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
            f"| {r['row']} | {r['sources']} | {r['class_weighting']} | {r['train_examples']} "
            f"| {r['mean_tokens_per_example']} | {_pct(r['dev_weighted_f1'])} | **{_pct(r['weighted_f1'])}** "
            f"| {delta} | {_pct(r['weighted_f1_without_bias'])} | {_pct(r['macro_f1'])} | {_pct(r['accuracy'])} "
            f"| {r['train_minutes']} |")
    done = {r["row"] for r in results}
    for row in spec.rows:
        if row not in done:
            lines.append(f"| {row} | {json.dumps(spec.rows[row])} | | | | | **not run yet** | | | | | |")
    lines += ["", "Per-class test F1:", "", "| row | " + " | ".join(labels) + " |",
              "|---|" + "---:|" * len(labels)]
    for r in results:
        lines.append(f"| {r['row']} | " + " | ".join(_pct(r["per_class_f1"].get(lab)) for lab in labels) + " |")
    lines += ["", f"Test utterances per row: {sorted({r['test_utterances'] for r in results})}; compared on "
              f"{results[0]['delta_vs_reference']['common_utterances']} shared utterances.", "",
              "Rerun (finished rows are reused):", "", "```bash", command, "```", ""]
    return "\n".join(lines)


def run_ablation(spec: AblationSpec, only: Sequence[str] | None = None, command: str = "",
                 table_only: bool = False) -> Path:
    """Run the spec's unfinished rows (none with `table_only`), then write ablation.md and ablation.json over the
    finished rows; return the Markdown path."""
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    print(f"ablation {spec.path} -> {spec.output_dir} ({len(spec.rows)} rows, {spec.parallel} at a time)", flush=True)
    if not table_only:
        run_rows(spec, only)
    finished = [row for row in spec.rows if row_is_finished(spec, row)]
    if spec.reference not in finished:
        print(f"the reference row {spec.reference!r} has not finished; no table yet", flush=True)
        return spec.output_dir / "ablation.md"
    missing = [row for row in spec.rows if row not in finished]
    if missing:
        print(f"rows not run yet (listed as such in the table): {missing}", flush=True)
    results = collect_results(spec, finished)
    command = command or f"erc-llm ablate --spec {spec.path}"
    atomic_write_json(spec.output_dir / "ablation.json", {"spec": str(spec.path), "command": command,
                                                          "common": spec.common, "rows": results,
                                                          "not_run": missing})
    report = atomic_write_text(spec.output_dir / "ablation.md", render_table(spec, results, command))
    print(f"table: {report}", flush=True)
    return report


def _cmd_ablate(args: argparse.Namespace) -> int:
    """`erc-llm ablate`."""
    try:
        spec = load_spec(args.spec, args.output_dir)
    except AblationSpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.parallel:
        spec.parallel = args.parallel
    if args.dry_run:
        for row in spec.rows:
            state = "finished" if row_is_finished(spec, row) else "to run"
            print(f"{row} ({state}): python {SFT_SCRIPT.relative_to(REPO)} " + " ".join(spec.row_args(row)))
        return 0
    run_ablation(spec, args.only, command=f"erc-llm ablate --spec {args.spec}", table_only=args.table_only)
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add `erc-llm ablate`."""
    p = subparsers.add_parser("ablate", help="train/evaluate one SFT run per ablation row and write the table")
    p.add_argument("--spec", required=True, help="ablation spec YAML (recipes/<model>/ablation/<corpus>.yaml)")
    p.add_argument("--output-dir", default=None, help="override the spec's output_dir")
    p.add_argument("--parallel", type=int, default=None, help="override the spec's runs-at-once")
    p.add_argument("--only", nargs="+", default=None, help="run only these rows (the table needs all)")
    p.add_argument("--dry-run", action="store_true", help="print each row's command and state, run nothing")
    p.add_argument("--table-only", action="store_true", help="write the table from the finished rows, train nothing")
    p.set_defaults(func=_cmd_ablate)
