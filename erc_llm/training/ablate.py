"""Ablation runner (`erc-llm ablate`): one SFT run per row of a spec, then the table of
`erc_llm.evaluation.ablation` (which reads only the rows' run folders).

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
`<output_dir>/<row>/`. A row whose run folder holds `metrics.json` from the same settings (the same arguments, or
others that resolve to the same erc_config.yaml) is reused, so an interrupted ablation resumes with the same
command: an unfinished row of the same settings continues from its last checkpoint (sft.py resumes), one started
with other settings is rerun from scratch. The table
(`ablation.md` + `ablation.json`) reports rows that hurt as plainly as rows that help.

Run folders live under `runs/`, outside the repository, so a new checkout has none. `ablation.json` keeps every
row's resolved settings and test predictions; a spec's `recorded: evaluation/ablation_<corpus>.json` (the committed
table) lets a row recorded there with today's settings stand in for its missing run folder, so a new row is
compared with the recorded ones without training them again.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from erc_llm.evaluation.ablation import (
    AblationSpecError,
    carried_rows,
    collect_results,
    recorded_rows,
    render_table,
)
from erc_llm.io import atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parents[2]
SFT_SCRIPT = REPO / "recipes" / "sft.py"
ROW_ARGS_FILE = "ablation_row.json"
SPEC_KEYS = {"base_config", "output_dir", "parallel", "reference", "common", "rows", "description", "recorded"}
# Prompt switches shown in the table's "sources" column, in prompt order.


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
    recorded: Path | None = None  # an earlier table's ablation.json whose rows stand in for missing run folders

    def shown_recorded(self) -> str:
        """The recorded table's path as the spec names it (relative to the repo when inside it)."""
        if self.recorded is None:
            return ""
        return str(self.recorded.relative_to(REPO) if self.recorded.is_relative_to(REPO) else self.recorded)

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
    recorded = _resolve(str(raw["recorded"]), spec_path) if raw.get("recorded") else None
    if recorded is not None and not recorded.is_file():
        raise AblationSpecError(f"{spec_path}: recorded table {raw['recorded']!r} not found")
    spec = AblationSpec(
        path=spec_path, base_config=base_config, rows={str(k): dict(v or {}) for k, v in rows.items()},
        reference=str(raw["reference"]), common=dict(common), parallel=parallel,
        output_dir=Path(output_dir or raw["output_dir"]), description=str(raw.get("description") or ""),
        recorded=recorded,
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


def _same_settings(spec: AblationSpec, row: str) -> bool:
    """True when the row's saved erc_config.yaml equals what the row's arguments resolve to today (so a spec that
    spells the same experiment differently, e.g. pins in `common` what its base config used to say, reuses it)."""
    from erc_llm.training.config import parse_sft_args, resolved_config, saved_run_matches  # lazy: TRL is slow

    return saved_run_matches(spec.output_dir / row, resolved_config(*parse_sft_args(spec.row_args(row))))


def _row_dir_matches(spec: AblationSpec, row: str) -> bool:
    """True when the row's folder holds a run of this row's experiment: launched with exactly this row's arguments
    (its marker file says so), or with other arguments that resolve to the same settings (its saved
    erc_config.yaml; a setting the toolkit gained after that run counts as its default)."""
    marker = spec.output_dir / row / ROW_ARGS_FILE
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == _fingerprint(spec.row_args(row)):
        return True
    return _same_settings(spec, row)


def row_is_finished(spec: AblationSpec, row: str) -> bool:
    """True when the row's folder holds metrics.json from a run of this row's experiment (`_row_dir_matches`)."""
    return (spec.output_dir / row / "metrics.json").is_file() and _row_dir_matches(spec, row)


def prepare_row_dir(spec: AblationSpec, row: str) -> Path:
    """The row's run folder, ready to launch: kept when an unfinished run of the same experiment left it (sft.py
    resumes from its last checkpoint), emptied when it was started with other settings."""
    run_dir = spec.output_dir / row
    if run_dir.exists() and not _row_dir_matches(spec, row):
        shutil.rmtree(run_dir)  # run with other arguments: start it over
    run_dir.mkdir(parents=True, exist_ok=True)
    args = spec.row_args(row)
    atomic_write_json(run_dir / ROW_ARGS_FILE, {"fingerprint": _fingerprint(args), "args": args})
    return run_dir


def _launch(spec: AblationSpec, row: str, threads: int) -> tuple[subprocess.Popen, Any]:
    """Start (or continue) one row's SFT run; its log under <output_dir>/logs."""
    prepare_row_dir(spec, row)
    args = spec.row_args(row)
    log_path = spec.output_dir / "logs" / f"{row}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    log = open(log_path, "ab")  # noqa: SIM115 - closed when the process ends; a continued row appends
    process = subprocess.Popen([sys.executable, str(SFT_SCRIPT), *args], stdout=log, stderr=subprocess.STDOUT,
                               env=env, cwd=REPO)
    return process, log


@dataclass
class Recorded:
    """What the spec's recorded table offers: rows that stand in for missing run folders, rows it cannot offer
    (row -> why), and the table itself (empty when the spec names none)."""

    usable: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    table: dict[str, Any] = field(default_factory=dict)


def load_recorded(spec: AblationSpec) -> Recorded:
    """Read the spec's `recorded` table (none: nothing recorded); a row with a finished run folder ignores it."""
    if spec.recorded is None:
        return Recorded()
    from erc_llm.training.config import parse_sft_args, resolved_config  # lazy: TRL is slow to import

    try:
        table = json.loads(spec.recorded.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AblationSpecError(f"{spec.path}: recorded table {spec.recorded} is unreadable: {exc}") from exc
    wanted = {row: resolved_config(*parse_sft_args(spec.row_args(row))) for row in spec.rows}
    usable, refused = recorded_rows(spec, table, wanted)
    return Recorded(usable, refused, table)


def run_rows(spec: AblationSpec, only: Sequence[str] | None = None, threads: int | None = None,
             recorded: Recorded | None = None) -> dict[str, float]:
    """Run every row that has neither a finished run folder nor a usable record in the spec's recorded table,
    `spec.parallel` at a time, each with `threads` threads (default: the cores shared out among the parallel
    rows); return each launched row's wall seconds."""
    recorded = recorded or Recorded()
    rows = [r for r in spec.rows if not only or r in only]
    finished = {r for r in rows if row_is_finished(spec, r)}  # each check parses the row's arguments: once
    todo = [r for r in rows if r not in finished and r not in recorded.usable]
    for row in rows:
        if row in finished:
            print(f"  {row}: finished earlier, reused", flush=True)
        elif row in recorded.usable:
            print(f"  {row}: recorded in {spec.shown_recorded()}, reused (its test predictions are there)", flush=True)
    threads = threads or max(1, (os.cpu_count() or 1) // spec.parallel)
    running: dict[str, tuple[subprocess.Popen, Any, float]] = {}
    walls: dict[str, float] = {}
    failed: list[str] = []
    with _rows_stop_with_the_runner(running):
        _run_queue(spec, todo, running, walls, failed, threads)
    if failed:
        logs = ", ".join(str(spec.output_dir / "logs" / f"{r}.log") for r in failed)
        raise RowsFailed(f"ablation row(s) {failed} failed; see {logs}")
    return walls


class RowsFailed(RuntimeError):
    """One or more rows' trainers failed (the message names them and their logs)."""


class _Stopped(Exception):
    """The runner was asked to stop (SIGTERM)."""


@contextlib.contextmanager
def _rows_stop_with_the_runner(running: dict[str, tuple[subprocess.Popen, Any, float]]):
    """A runner stopped by Ctrl-C or SIGTERM stops its running rows too (SIGTERM, then SIGKILL after 30 s), so no
    orphaned trainer keeps writing into a row folder that a rerun of the same command continues; their last
    checkpoints stay for that rerun."""

    def on_term(signum, frame):
        raise _Stopped()

    in_main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, on_term) if in_main_thread else None
    try:
        yield
    except (_Stopped, KeyboardInterrupt):
        for row, (process, log, _) in running.items():
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
            print(f"  {row}: stopped with the runner; its checkpoints are kept, the same command continues it",
                  flush=True)
        raise SystemExit(130) from None
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _exit_reason(returncode: int) -> str:
    """A failed row's exit, with the likely cause of a SIGKILL nobody sent: the kernel's out-of-memory killer."""
    if returncode == -signal.SIGKILL:
        return ("killed by SIGKILL, most likely the out-of-memory killer (`dmesg` says): rows at once share the "
                "machine's memory; run fewer with --parallel 1, the same command continues from the last checkpoint")
    return f"exit {returncode}"


def _run_queue(spec: AblationSpec, todo: list[str], running: dict[str, tuple[subprocess.Popen, Any, float]],
               walls: dict[str, float], failed: list[str], threads: int) -> None:
    """Launch rows `spec.parallel` at a time until all have ended; record wall seconds and failures."""
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
            status = "done" if process.returncode == 0 else f"FAILED ({_exit_reason(process.returncode)})"
            print(f"  {row}: {status} in {walls[row] / 60:.1f} min", flush=True)
            if process.returncode != 0:
                failed.append(row)


def run_ablation(spec: AblationSpec, only: Sequence[str] | None = None, command: str = "",
                 table_only: bool = False, threads: int | None = None) -> Path:
    """Run the spec's unfinished rows (none with `table_only`), then write ablation.md and ablation.json over the
    finished rows; return the Markdown path."""
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    print(f"ablation {spec.path} -> {spec.output_dir} ({len(spec.rows)} rows, {spec.parallel} at a time)", flush=True)
    recorded = load_recorded(spec)
    failure = None
    if not table_only:
        try:
            run_rows(spec, only, threads, recorded)
        except RowsFailed as exc:  # the finished rows still get their table
            failure = exc
    in_folders = [row for row in spec.rows if row_is_finished(spec, row)]
    stand_in = {row: result for row, result in recorded.usable.items() if row not in in_folders}
    finished = [row for row in spec.rows if row in in_folders or row in stand_in]
    if spec.reference not in finished:
        print(f"the reference row {spec.reference!r} has not finished; no table yet", flush=True)
        if failure:
            raise failure
        return spec.output_dir / "ablation.md"
    results = collect_results(spec, finished, recorded=stand_in)
    results += carried_rows(spec, results, recorded.table, [r for r in spec.rows if r not in finished])
    order = list(spec.rows)
    results.sort(key=lambda r: order.index(r["row"]))
    missing = [row for row in spec.rows if row not in {r["row"] for r in results}]
    for row in missing:
        why = recorded.refused.get(row)
        print(f"  {row}: not run yet" + (f" ({spec.shown_recorded()}: {why})" if why else ""), flush=True)
    command = command or f"erc-llm ablate --spec {spec.path}"
    atomic_write_json(spec.output_dir / "ablation.json", {"spec": str(spec.path), "command": command,
                                                          "common": spec.common, "rows": results,
                                                          "not_run": missing}, inline_scalar_lists=True)
    report = atomic_write_text(spec.output_dir / "ablation.md", render_table(spec, results, command))
    print(f"table: {report}", flush=True)
    if failure:
        raise failure
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
        recorded = load_recorded(spec)
        for row in spec.rows:
            state = ("finished" if row_is_finished(spec, row) else
                     f"recorded in {spec.shown_recorded()}" if row in recorded.usable else
                     f"to run; {spec.shown_recorded()}: {recorded.refused[row]}" if row in recorded.refused else "to run")
            print(f"{row} ({state}): python {SFT_SCRIPT.relative_to(REPO)} " + " ".join(spec.row_args(row)))
        return 0
    try:
        run_ablation(spec, args.only, command=f"erc-llm ablate --spec {args.spec}", table_only=args.table_only,
                     threads=args.threads)
    except (RowsFailed, AblationSpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add `erc-llm ablate`."""
    p = subparsers.add_parser("ablate", help="train/evaluate one SFT run per ablation row and write the table")
    p.add_argument("--spec", required=True, help="ablation spec YAML (recipes/<model>/ablation/<corpus>.yaml)")
    p.add_argument("--output-dir", default=None, help="override the spec's output_dir")
    p.add_argument("--parallel", type=int, default=None, help="override the spec's runs-at-once")
    p.add_argument("--threads", type=int, default=None,
                   help="threads per row (default: the machine's cores shared out among the parallel rows)")
    p.add_argument("--only", nargs="+", default=None, help="run only these rows (the table needs all)")
    p.add_argument("--dry-run", action="store_true", help="print each row's command and state, run nothing")
    p.add_argument("--table-only", action="store_true", help="write the table from the finished rows, train nothing")
    p.set_defaults(func=_cmd_ablate)
