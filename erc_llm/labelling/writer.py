"""Resumable, crash-safe output for long labelling runs.

A run directory being labelled holds `run.json` (what produced it: model, adapter, prompt config, input) and
`labels.partial.jsonl`, to which each finished batch is appended and fsynced. A killed run leaves at most one
torn last line, which is dropped on resume (the utterances on it are labelled again). Rerunning the same
command skips every finished utterance; a different model or config on resume is an error. When all is done,
`predictions.jsonl` (and `metrics.json` if gold labels are known) are written atomically and the partial
file is removed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from erc_llm.evaluation.rundir import PredictionRecord
from erc_llm.io import atomic_write_json

PARTIAL_NAME = "labels.partial.jsonl"
RUN_NAME = "run.json"


class ResumeMismatchError(ValueError):
    """The output folder holds a run made with another model, adapter, prompt config or input (a ValueError: the
    commands and recipes report it as one `error:` line, exit 2)."""


class ResumableWriter:
    """Append-only prediction log with a fingerprint check on resume."""

    def __init__(self, run_dir: str | Path, fingerprint: Mapping[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.partial = self.run_dir / PARTIAL_NAME
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        self.torn_lines = 0
        run_file = self.run_dir / RUN_NAME
        if run_file.exists():
            previous = json.loads(run_file.read_text(encoding="utf-8")).get("fingerprint")
            if previous != self.fingerprint:
                diff = sorted(k for k in set(previous or {}) | set(self.fingerprint)
                              if (previous or {}).get(k) != self.fingerprint.get(k))
                raise ResumeMismatchError(
                    f"{self.run_dir} holds a run made with different settings ({', '.join(diff)}); "
                    "use a new output folder or delete this one"
                )
        else:
            atomic_write_json(run_file, {"fingerprint": self.fingerprint})
        self.done: dict[tuple[str, int], PredictionRecord] = self._read_partial()

    def _read_partial(self) -> dict[tuple[str, int], PredictionRecord]:
        """Finished records from an earlier attempt; a torn last line is cut off the file."""
        done: dict[tuple[str, int], PredictionRecord] = {}
        if not self.partial.exists():
            return done
        good_bytes = 0
        with open(self.partial, "rb") as handle:
            for raw in handle:
                try:
                    if not raw.endswith(b"\n"):
                        raise ValueError("torn line")
                    record = PredictionRecord.from_dict(json.loads(raw))
                except (ValueError, TypeError):
                    self.torn_lines += 1
                    break
                done[record.key] = record
                good_bytes += len(raw)
        if self.torn_lines:
            with open(self.partial, "r+b") as handle:
                handle.truncate(good_bytes)
        return done

    def append(self, records: Iterable[PredictionRecord]) -> None:
        """Append finished records durably (one write + fsync per batch)."""
        lines = []
        for record in records:
            if record.key in self.done:
                continue
            self.done[record.key] = record
            lines.append(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
        if not lines:
            return
        with open(self.partial, "a", encoding="utf-8") as handle:
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())

    def finish(self, order: Iterable[tuple[str, int]]) -> list[PredictionRecord]:
        """Records in input order, once every key is done; the partial log is then removed."""
        records = []
        missing = []
        for key in order:
            if key in self.done:
                records.append(self.done[key])
            else:
                missing.append(key)
        if missing:
            raise RuntimeError(f"{len(missing)} utterance(s) not labelled, e.g. {missing[:3]}")
        return records

    def cleanup(self) -> None:
        """Remove the partial log after the final files are written."""
        self.partial.unlink(missing_ok=True)
