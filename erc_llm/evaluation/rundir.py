"""The run directory: the unit every stage writes and ``erc-llm compare`` reads.

A run directory holds

* ``predictions.jsonl`` - one JSON object per utterance (see :class:`PredictionRecord`), keyed by
  ``(dialogue_id, utterance_index)``;
* ``metrics.json`` - the scores of those predictions plus provenance, schema ``erc_llm.metrics/1``.

Both files are written atomically, so a crashed stage never leaves a half-written run behind.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from erc_llm.evaluation.metrics import compute_metrics
from erc_llm.io import atomic_open, atomic_write_json

__all__ = [
    "METRICS_FILENAME",
    "METRICS_SCHEMA",
    "PREDICTIONS_FILENAME",
    "PredictionRecord",
    "RunFormatError",
    "evaluate_run",
    "read_metrics",
    "read_predictions",
    "write_metrics",
    "write_predictions",
]

PREDICTIONS_FILENAME = "predictions.jsonl"
METRICS_FILENAME = "metrics.json"
METRICS_SCHEMA = "erc_llm.metrics/1"

_SCORE_KEYS = ("weighted_f1", "macro_f1", "accuracy", "per_class", "confusion", "n", "labels")
_METRICS_FILE_KEYS = ("schema", "system", "corpus", "split", *_SCORE_KEYS, "command", "created", "extra")


class RunFormatError(ValueError):
    """A run-directory file is missing, malformed, or does not follow its schema."""


@dataclass(frozen=True)
class PredictionRecord:
    """One predicted utterance, as stored on one line of ``predictions.jsonl``."""

    dialogue_id: str
    utterance_index: int
    speaker: str
    text: str
    pred: str
    gold: str | None = None
    utterance_id: str | None = None
    scores: dict[str, float] | None = None
    meta: dict[str, Any] | None = None  # the input utterance's extra fields/columns (Utterance.meta), if any

    @property
    def key(self) -> tuple[str, int]:
        """The alignment key shared by every run on the same data: ``(dialogue_id, utterance_index)``."""
        return (self.dialogue_id, self.utterance_index)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with every field present (absent optional values are ``None``)."""
        return {
            "dialogue_id": self.dialogue_id,
            "utterance_index": self.utterance_index,
            "utterance_id": self.utterance_id,
            "speaker": self.speaker,
            "text": self.text,
            "gold": self.gold,
            "pred": self.pred,
            "scores": None if self.scores is None else dict(self.scores),
            **({"meta": dict(self.meta)} if self.meta else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PredictionRecord:
        """Build a record from a parsed JSON object; errors (TypeError/ValueError) name the faulty field.

        ``dialogue_id``, ``utterance_index``, ``speaker``, ``text`` and ``pred`` are required; the nullable
        fields ``utterance_id``, ``gold`` and ``scores`` may be absent (read as null). Unknown keys are ignored.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        missing = [
            name for name in ("dialogue_id", "utterance_index", "speaker", "text", "pred") if name not in data
        ]
        if missing:
            raise ValueError(f"missing required field(s): {', '.join(missing)}")
        for name in ("dialogue_id", "speaker", "text", "pred"):
            if not isinstance(data[name], str):
                raise TypeError(f"field {name!r} must be a string, got {data[name]!r}")
        utterance_index = data["utterance_index"]
        if isinstance(utterance_index, bool) or not isinstance(utterance_index, int):
            raise TypeError(f"field 'utterance_index' must be an integer, got {utterance_index!r}")
        if utterance_index < 0:
            raise ValueError(f"field 'utterance_index' must be non-negative, got {utterance_index}")
        for name in ("gold", "utterance_id"):
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"field {name!r} must be a string or null, got {value!r}")
        return cls(
            dialogue_id=data["dialogue_id"],
            utterance_index=utterance_index,
            speaker=data["speaker"],
            text=data["text"],
            pred=data["pred"],
            gold=data.get("gold"),
            utterance_id=data.get("utterance_id"),
            scores=_parse_scores(data.get("scores")),
            meta=_parse_meta(data.get("meta")),
        )


def _parse_meta(raw_meta: Any) -> dict[str, Any] | None:
    """The optional ``meta`` object (or null)."""
    if raw_meta is None:
        return None
    if not isinstance(raw_meta, Mapping):
        raise TypeError(f"field 'meta' must be an object or null, got {raw_meta!r}")
    return dict(raw_meta)


def _parse_scores(raw_scores: Any) -> dict[str, float] | None:
    """Validate a ``{label: probability}`` mapping (or null) and return it with float values."""
    if raw_scores is None:
        return None
    if not isinstance(raw_scores, Mapping):
        raise TypeError(
            f"field 'scores' must be an object of label -> probability or null, got {raw_scores!r}"
        )
    parsed: dict[str, float] = {}
    for label, probability in raw_scores.items():
        if isinstance(probability, bool) or not isinstance(probability, (int, float)):
            raise TypeError(f"scores[{label!r}] must be a number, got {probability!r}")
        if not math.isfinite(probability):
            raise ValueError(f"scores[{label!r}] must be finite, got {probability!r}")
        parsed[str(label)] = float(probability)
    return parsed


def _predictions_path(path: str | os.PathLike[str]) -> Path:
    """Resolve a run directory or a predictions file path to the predictions file.

    A path that is an existing directory, or that does not end in ``.jsonl`` (e.g. a run directory not yet
    created), means ``<path>/predictions.jsonl``.
    """
    candidate = Path(path)
    if candidate.is_dir() or candidate.suffix != ".jsonl":
        return candidate / PREDICTIONS_FILENAME
    return candidate


def write_predictions(path: str | os.PathLike[str], records: Iterable[PredictionRecord]) -> Path:
    """Atomically write ``records`` as JSON lines to ``path`` (a ``.jsonl`` file or a run directory, created if
    missing); return the file written.

    Raises ValueError if two records share a ``(dialogue_id, utterance_index)`` key.
    """
    target = _predictions_path(path)
    seen_keys: set[tuple[str, int]] = set()
    with atomic_open(target, "w") as handle:
        for record in records:
            if record.key in seen_keys:
                raise ValueError(
                    f"duplicate prediction for dialogue {record.dialogue_id!r} "
                    f"utterance {record.utterance_index}"
                )
            seen_keys.add(record.key)
            handle.write(json.dumps(record.to_dict(), ensure_ascii=False, allow_nan=False))
            handle.write("\n")
    return target


def read_predictions(path: str | os.PathLike[str]) -> list[PredictionRecord]:
    """Read ``predictions.jsonl`` (or a run directory containing it); blank lines are skipped.

    Raises FileNotFoundError if the file is missing, and RunFormatError naming the file and line number on
    bad JSON, a missing or mistyped field, or a repeated ``(dialogue_id, utterance_index)`` key.
    """
    source = _predictions_path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no predictions file at {source}")
    records: list[PredictionRecord] = []
    first_line_of_key: dict[tuple[str, int], int] = {}
    with open(source, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError as error:
                raise RunFormatError(
                    f"{source}:{line_number}: invalid JSON ({error.msg} at column "
                    f"{error.colno}); the line may be truncated"
                ) from error
            try:
                record = PredictionRecord.from_dict(parsed)
            except (TypeError, ValueError) as error:
                raise RunFormatError(f"{source}:{line_number}: {error}") from error
            if record.key in first_line_of_key:
                raise RunFormatError(
                    f"{source}:{line_number}: dialogue {record.dialogue_id!r} utterance "
                    f"{record.utterance_index} already appeared on line {first_line_of_key[record.key]}"
                )
            first_line_of_key[record.key] = line_number
            records.append(record)
    return records


def write_metrics(
    run_dir: str | os.PathLike[str],
    metrics: Mapping[str, Any],
    *,
    system: str,
    corpus: str,
    split: str,
    command: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically write ``run_dir/metrics.json`` from a :func:`compute_metrics`-style dict; return its path.

    Keys of ``metrics`` beyond the standard score keys (e.g. the skipped-row counts from
    :func:`evaluate_run`) are kept under ``extra``, merged with (and overridden by) the ``extra`` argument.
    """
    missing = [name for name in _SCORE_KEYS if name not in metrics]
    if missing:
        raise ValueError(f"metrics is missing {', '.join(missing)}; build it with compute_metrics()")
    merged_extra = {name: value for name, value in metrics.items() if name not in _SCORE_KEYS}
    merged_extra.update(extra or {})
    document: dict[str, Any] = {
        "schema": METRICS_SCHEMA,
        "system": system,
        "corpus": corpus,
        "split": split,
        **{name: metrics[name] for name in _SCORE_KEYS},
        "command": command,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "extra": merged_extra,
    }
    return atomic_write_json(Path(run_dir) / METRICS_FILENAME, document)


def read_metrics(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and check ``run_dir/metrics.json``; FileNotFoundError if absent, RunFormatError if malformed."""
    source = Path(run_dir) / METRICS_FILENAME
    if not source.is_file():
        raise FileNotFoundError(f"no {METRICS_FILENAME} in run directory {Path(run_dir)}")
    try:
        document = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RunFormatError(f"{source}:{error.lineno}: invalid JSON ({error.msg})") from error
    if not isinstance(document, dict):
        raise RunFormatError(f"{source}: expected a JSON object at the top level")
    if document.get("schema") != METRICS_SCHEMA:
        raise RunFormatError(f"{source}: schema is {document.get('schema')!r}, expected {METRICS_SCHEMA!r}")
    missing = [name for name in _METRICS_FILE_KEYS if name not in document]
    if missing:
        raise RunFormatError(f"{source}: missing field(s) {', '.join(missing)}")
    for name in ("system", "corpus", "split"):
        if not isinstance(document[name], str):
            raise RunFormatError(f"{source}: field {name!r} must be a string, got {document[name]!r}")
    return document


def evaluate_run(run_dir: str | os.PathLike[str], labels: Sequence[str]) -> dict[str, Any]:
    """Score ``run_dir/predictions.jsonl`` over ``labels``; rows whose gold is null are skipped but counted.

    Returns the :func:`compute_metrics` dict plus ``n_predictions`` (all rows) and ``n_without_gold``
    (rows left out of the scores). Raises ValueError if no row has a gold label; the message of an
    out-of-label-set value names the run's file and the offending dialogue/utterance.
    """
    source = _predictions_path(run_dir)
    records = read_predictions(source)
    scored = [record for record in records if record.gold is not None]
    if not scored:
        raise ValueError(
            f"{source}: none of the {len(records)} predictions has a gold label to score against"
        )
    label_set = set(labels)
    for record in scored:
        for role, value in (("gold", record.gold), ("pred", record.pred)):
            if value not in label_set:
                raise ValueError(
                    f"{source}: dialogue {record.dialogue_id!r} utterance {record.utterance_index} "
                    f"has {role} {value!r}, which is not one of the labels {list(labels)}"
                )
    metrics = compute_metrics([record.gold for record in scored], [record.pred for record in scored], labels)
    metrics["n_predictions"] = len(records)
    metrics["n_without_gold"] = len(records) - len(scored)
    return metrics
