"""Readers for MELD CSV, EmoryNLP CSV, EmoryNLP's official JSON and the user JSONL format.

Every reader returns a `LoadedSplit` in the one schema. Malformed input raises `DataFormatError` naming
the file and the row; with `skip_invalid=True` the bad rows are left out and listed in
`LoadedSplit.skipped` instead (never dropped silently).
"""

from __future__ import annotations

import ast
import csv
import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from erc_llm.data.errors import DataFormatError, SkippedRow
from erc_llm.data.labels import EMORYNLP_LABELS, MELD_LABELS, LabelSet
from erc_llm.data.schema import Dialogue, LoadedSplit, Utterance
from erc_llm.data.text import clean_text

MELD_REQUIRED = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
EMORYNLP_CSV_REQUIRED = ("Utterance", "Speaker", "Emotion", "Scene_ID", "Utterance_ID", "Season", "Episode")
# Columns each CSV reader understands; any other column is kept per utterance in `Utterance.meta[column]`.
MELD_KNOWN = (*MELD_REQUIRED, "Sr No.", "Sentiment", "Season", "Episode", "StartTime", "EndTime")
EMORYNLP_CSV_KNOWN = (*EMORYNLP_CSV_REQUIRED, "Start_Time", "End_Time")
_TIME = re.compile(r"^(\d+):(\d{2}):(\d{2})(?:[.,](\d+))?$")


class _RowSink:
    """Collects per-row errors: raises at once, or records them when skipping is switched on."""

    def __init__(self, path: Path, skip_invalid: bool) -> None:
        self.path = path
        self.skip_invalid = skip_invalid
        self.skipped: list[SkippedRow] = []

    def fail(self, row: int | str, reason: str) -> None:
        """Raise a DataFormatError, or record the row as skipped."""
        if not self.skip_invalid:
            raise DataFormatError(self.path, row, reason)
        self.skipped.append(SkippedRow(str(self.path), row, reason))


def parse_timestamp(value: str | None) -> float | None:
    """'00:16:16,059' or '00:00:02.877' -> seconds; empty -> None; anything else raises ValueError."""
    if value is None or not value.strip():
        return None
    match = _TIME.match(value.strip())
    if not match:
        raise ValueError(f"bad timestamp {value!r} (expected HH:MM:SS,mmm)")
    hours, minutes, seconds, fraction = match.groups()
    frac = float(f"0.{fraction}") if fraction else 0.0
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + frac


def _read_csv_records(path: Path, required: Iterable[str]) -> Iterable[tuple[str, dict[str, str]]]:
    """Yield (row label, record) from a CSV file, checking header, field counts, quoting and encoding.

    Bytes that are not UTF-8 are kept as surrogates while reading (the decoder works ahead in blocks, so a
    decode error would name the wrong record) and reported on the record and line that hold them.
    """
    try:
        handle = open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")
    except FileNotFoundError:
        raise DataFormatError(path, None, "file not found (run `erc-llm data prepare` or set --data-dir)") from None
    except IsADirectoryError:
        raise DataFormatError(path, None, "is a folder, not a CSV file") from None
    with handle:
        reader = csv.reader(handle, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise DataFormatError(path, None, "file is empty (no header row)") from None
        except csv.Error as exc:
            raise DataFormatError(path, "header", f"unreadable header: {exc}") from None
        if _bad_bytes(header):
            raise DataFormatError(path, "header", f"not valid UTF-8: {_bad_bytes(header)}")
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise DataFormatError(path, "header", f"missing column(s) {missing}; found {header}")
        record_no = 0
        while True:
            first_line = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataFormatError(path, f"{record_no + 1} (line {first_line})", f"broken CSV quoting: {exc}") from None
            record_no += 1
            where = f"{record_no} (line {first_line})"
            if not fields or all(not f.strip() for f in fields):
                continue  # blank line between records: nothing to lose
            bad = _bad_bytes(fields)
            if bad:
                yield where, {"__error__": f"not valid UTF-8: {bad} (save the file as UTF-8)"}
                continue
            if len(fields) != len(header):
                yield where, {"__error__": f"has {len(fields)} fields, header has {len(header)} (broken quoting?)"}
                continue
            yield where, dict(zip(header, fields))


def _bad_bytes(fields: Iterable[str]) -> str:
    """Description of the first undecodable bytes (kept as surrogates) in some fields, else ''."""
    for value in fields:
        match = re.search(r"[\udc80-\udcff]+", value)
        if match:
            raw = match.group().encode("utf-8", "surrogateescape")
            return f"byte(s) {raw.hex(' ')} in {value[:40].encode('utf-8', 'replace').decode('utf-8')!r}"
    return ""


def _label(raw: str, label_set: LabelSet | None) -> str:
    """Canonical label or ValueError with the allowed names."""
    if label_set is None:
        return raw.strip().lower()
    label = label_set.canonical(raw)
    if label is None:
        raise ValueError(f"unknown label {raw!r} (expected one of {list(label_set.labels)})")
    return label


def _text(raw: str) -> str:
    """Cleaned utterance text; ValueError when nothing is left."""
    text = clean_text(raw)
    if not text:
        raise ValueError("empty utterance text")
    return text


def _group(
    items: list[tuple[tuple, str, Utterance]], corpus: str, split: str, sink: _RowSink
) -> list[Dialogue]:
    """Order utterances by their sort key inside each dialogue and renumber positions from 0."""
    by_dialogue: dict[str, list[tuple[tuple, str, Utterance]]] = {}
    for item in items:
        by_dialogue.setdefault(item[2].dialogue_id, []).append(item)
    dialogues: list[Dialogue] = []
    for dialogue_id, rows in by_dialogue.items():
        rows.sort(key=lambda r: r[0])
        seen: dict[tuple, str] = {}
        kept: list[Utterance] = []
        for sort_key, where, utt in rows:
            if sort_key in seen:
                sink.fail(where, f"duplicate utterance {utt.utterance_id!r} (first at row {seen[sort_key]})")
                continue
            seen[sort_key] = where
            kept.append(utt)
        utterances = [_renumber(u, i) for i, u in enumerate(kept)]
        dialogues.append(Dialogue(id=dialogue_id, corpus=corpus, split=split, utterances=utterances))
    dialogues.sort(key=lambda d: _natural_key(d.id))
    return dialogues


def _renumber(utt: Utterance, index: int) -> Utterance:
    """Copy of an utterance with its in-dialogue position set."""
    return Utterance(
        dialogue_id=utt.dialogue_id, index=index, speakers=utt.speakers, text=utt.text, label=utt.label,
        utterance_id=utt.utterance_id, start=utt.start, end=utt.end, media=utt.media, meta=utt.meta,
    )


def _natural_key(text: str) -> list:
    """Sort 'meld/train/10' after 'meld/train/9'."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", text)]


def _load_csv(
    path: Path,
    corpus: str,
    split: str,
    required: tuple[str, ...],
    build: Callable[[dict[str, str]], tuple[tuple, Utterance]],
    skip_invalid: bool,
) -> LoadedSplit:
    """Shared CSV driver: read records, build utterances, collect failures, group into dialogues."""
    sink = _RowSink(path, skip_invalid)
    items: list[tuple[tuple, str, Utterance]] = []
    for where, record in _read_csv_records(path, required):
        if "__error__" in record:
            sink.fail(where, record["__error__"])
            continue
        try:
            sort_key, utt = build(record)
        except (ValueError, SyntaxError) as exc:
            sink.fail(where, str(exc))
            continue
        items.append((sort_key, where, utt))
    dialogues = _group(items, corpus, split, sink)
    return LoadedSplit(corpus=corpus, split=split, path=str(path), dialogues=dialogues, skipped=sink.skipped)


def _int(record: Mapping[str, str], column: str) -> int:
    """An integer column, or ValueError naming the column."""
    value = record[column].strip()
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"column {column} must be an integer, got {value!r}") from None


def _name(raw: str) -> str:
    """Speaker name with whitespace and encoding residue cleaned."""
    return clean_text(raw)


def _extra_columns(record: Mapping[str, str], known: Iterable[str]) -> dict[str, str]:
    """Columns beyond the reader's own, as {column: stripped value} (kept in `Utterance.meta`)."""
    known = set(known)
    return {column: value.strip() for column, value in record.items() if column not in known and column}


def load_meld_csv(
    path: str | Path, split: str, label_set: LabelSet | None = MELD_LABELS, skip_invalid: bool = False,
    corpus: str = "meld",
) -> LoadedSplit:
    """Read a MELD `*_sent_emo.csv` file; a dialogue is `Dialogue_ID` within the split.

    Columns beyond MELD's own are kept in `Utterance.meta` under their column name.
    """
    path = Path(path)

    def build(record: dict[str, str]) -> tuple[tuple, Utterance]:
        dialogue_no, utt_no = _int(record, "Dialogue_ID"), _int(record, "Utterance_ID")
        speaker = _name(record["Speaker"])
        if not speaker:
            raise ValueError("empty speaker")
        meta: dict[str, Any] = _extra_columns(record, MELD_KNOWN)
        for column in ("Sentiment", "Season", "Episode", "Sr No."):
            if record.get(column, "").strip():
                meta[column.lower().replace(" no.", "_no")] = record[column].strip()
        utt = Utterance(
            dialogue_id=f"{corpus}/{split}/{dialogue_no}",
            index=utt_no,
            speakers=(speaker,),
            text=_text(record["Utterance"]),
            label=_label(record["Emotion"], label_set),
            utterance_id=f"dia{dialogue_no}_utt{utt_no}",
            start=parse_timestamp(record.get("StartTime")),
            end=parse_timestamp(record.get("EndTime")),
            meta=meta,
        )
        return (utt_no,), utt

    return _load_csv(path, corpus, split, MELD_REQUIRED, build, skip_invalid)


def parse_speaker_list(raw: str) -> tuple[str, ...]:
    """EmoryNLP's speaker cell "['Monica Geller', 'Rachel Green']" -> names; ValueError if malformed."""
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        raise ValueError(f"speaker cell {raw!r} is not a Python list literal") from None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"speaker cell {raw!r} is not a list of names")
    names = tuple(n for n in (_name(v) for v in value) if n)
    if not names:
        raise ValueError(f"speaker cell {raw!r} names no speaker")
    return names


def emorynlp_scene_id(season: int, episode: int, scene: int) -> str:
    """Official EmoryNLP scene id, e.g. s01_e01_c04."""
    return f"s{season:02d}_e{episode:02d}_c{scene:02d}"


def load_emorynlp_csv(
    path: str | Path, split: str, label_set: LabelSet | None = EMORYNLP_LABELS, skip_invalid: bool = False,
    corpus: str = "emorynlp",
) -> LoadedSplit:
    """Read the reduced EmoryNLP CSV release; a dialogue is (Season, Episode, Scene_ID).

    Columns beyond EmoryNLP's own are kept in `Utterance.meta` under their column name.
    """
    path = Path(path)

    def build(record: dict[str, str]) -> tuple[tuple, Utterance]:
        season, episode = _int(record, "Season"), _int(record, "Episode")
        scene, utt_no = _int(record, "Scene_ID"), _int(record, "Utterance_ID")
        scene_id = emorynlp_scene_id(season, episode, scene)
        utt = Utterance(
            dialogue_id=f"{corpus}/{scene_id}",
            index=utt_no,
            speakers=parse_speaker_list(record["Speaker"]),
            text=_text(record["Utterance"]),
            label=_label(record["Emotion"], label_set),
            utterance_id=f"{scene_id}_u{utt_no:03d}",
            start=parse_timestamp(record.get("Start_Time")),
            end=parse_timestamp(record.get("End_Time")),
            meta={**_extra_columns(record, EMORYNLP_CSV_KNOWN), "season": season, "episode": episode},
        )
        return (utt_no,), utt

    return _load_csv(path, corpus, split, EMORYNLP_CSV_REQUIRED, build, skip_invalid)


def _read_json(path: Path) -> Any:
    """Parse a JSON file with errors that name the file and position."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DataFormatError(path, None, "file not found (run `erc-llm data prepare` or set --data-dir)") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataFormatError(path, f"line {line}", f"not valid UTF-8: byte(s) {exc.object[exc.start:exc.end].hex(' ')}") from None
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, f"line {exc.lineno}", f"invalid JSON: {exc.msg}") from None


def load_emorynlp_json(
    path: str | Path, split: str, label_set: LabelSet | None = EMORYNLP_LABELS, skip_invalid: bool = False,
    corpus: str = "emorynlp",
) -> LoadedSplit:
    """Read EmoryNLP's official JSON release (season → episodes → scenes → utterances); a scene is a dialogue."""
    path = Path(path)
    data = _read_json(path)
    sink = _RowSink(path, skip_invalid)
    if not isinstance(data, dict) or not isinstance(data.get("episodes"), list):
        raise DataFormatError(path, None, "expected an object with an 'episodes' list")
    items: list[tuple[tuple, str, Utterance]] = []
    for e, episode in enumerate(data["episodes"]):
        if not isinstance(episode, dict) or not isinstance(episode.get("scenes", []), list):
            raise DataFormatError(path, f"episodes[{e}]", "expected an object with a 'scenes' list")
        for s, scene in enumerate(episode.get("scenes", [])):
            if not isinstance(scene, dict) or not isinstance(scene.get("utterances", []), list):
                raise DataFormatError(path, f"episodes[{e}].scenes[{s}]", "expected an object with an 'utterances' list")
            scene_id = scene.get("scene_id") or f"{episode.get('episode_id', e)}_c{s:02d}"
            for u, raw in enumerate(scene.get("utterances", [])):
                if not isinstance(raw, dict):
                    sink.fail(f"episodes[{e}].scenes[{s}].utterances[{u}]", "an utterance must be a JSON object")
                    continue
                where = raw.get("utterance_id") or f"episodes[{e}].scenes[{s}].utterances[{u}]"
                try:
                    speakers = tuple(n for n in (_name(v) for v in raw.get("speakers") or []) if n)
                    if not speakers:
                        raise ValueError("no speaker")
                    if "transcript" not in raw:
                        raise ValueError("missing field 'transcript'")
                    emotion = raw.get("emotion")
                    utt = Utterance(
                        dialogue_id=f"{corpus}/{scene_id}",
                        index=u,
                        speakers=speakers,
                        text=_text(raw["transcript"]),
                        label=None if emotion is None else _label(emotion, label_set),
                        utterance_id=raw.get("utterance_id"),
                        meta={"season": e_season(scene_id), "episode": e_episode(scene_id)},
                    )
                except (ValueError, TypeError, AttributeError) as exc:
                    sink.fail(where, str(exc))
                    continue
                items.append(((u,), str(where), utt))
    dialogues = _group(items, corpus, split, sink)
    return LoadedSplit(corpus=corpus, split=split, path=str(path), dialogues=dialogues, skipped=sink.skipped)


def e_season(scene_id: str) -> int | None:
    """Season number from an id like s01_e02_c03."""
    match = re.match(r"s(\d+)_e(\d+)", scene_id)
    return int(match.group(1)) if match else None


def e_episode(scene_id: str) -> int | None:
    """Episode number from an id like s01_e02_c03."""
    match = re.match(r"s(\d+)_e(\d+)", scene_id)
    return int(match.group(2)) if match else None


def load_jsonl(
    path: str | Path,
    split: str = "custom",
    corpus: str = "custom",
    label_set: LabelSet | None = None,
    skip_invalid: bool = False,
) -> LoadedSplit:
    """Read the user JSONL format: one dialogue per line (see README, "Your own dialogues").

    Each line: {"dialogue_id": str, "utterances": [{"speaker": str | "speakers": [str], "text": str,
    "label": str (optional), "utterance_id": str, "start": float, "end": float, "media": {modality: path},
    "meta": {...}}]}. Labels are optional (unlabeled data can be labelled later); when present they must
    belong to `label_set` (if one is given). A first line `{"labels": [...]}` declares the label set (used when
    `label_set` is None; a different set of names than `label_set` is an error).
    """
    path = Path(path)
    sink = _RowSink(path, skip_invalid)
    dialogues: list[Dialogue] = []
    seen_ids: dict[str, int] = {}
    try:
        handle = open(path, encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise DataFormatError(path, None, "file not found") from None
    except IsADirectoryError:
        raise DataFormatError(path, None, "is a folder, not a JSONL file") from None
    first = True
    with handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if first:  # an optional {"labels": [...]} declaration before the first dialogue
                first = False
                from erc_llm.data.sources import parse_label_header

                declared = parse_label_header(line, path, line_no, corpus)
                if declared is not None:
                    if label_set is None:
                        label_set = declared
                    elif set(declared.labels) != set(label_set.labels):
                        sink.fail(f"line {line_no}", f"declares labels {list(declared.labels)}, but the label set "
                                                     f"in use is {list(label_set.labels)}")
                    continue
            bad = _bad_bytes([line])
            if bad:
                sink.fail(f"line {line_no}", f"not valid UTF-8: {bad} (save the file as UTF-8)")
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                sink.fail(f"line {line_no}", f"invalid JSON: {exc.msg}")
                continue
            try:
                dialogue = _jsonl_dialogue(record, corpus, split, label_set, line_no, sink)
            except ValueError as exc:
                sink.fail(f"line {line_no}", str(exc))
                continue
            if dialogue.id in seen_ids:
                sink.fail(f"line {line_no}", f"duplicate dialogue_id {dialogue.id!r} (first on line {seen_ids[dialogue.id]})")
                continue
            seen_ids[dialogue.id] = line_no
            dialogues.append(dialogue)
    return LoadedSplit(corpus=corpus, split=split, path=str(path), dialogues=dialogues, skipped=sink.skipped)


def _jsonl_dialogue(
    record: Any, corpus: str, split: str, label_set: LabelSet | None, line_no: int, sink: _RowSink
) -> Dialogue:
    """One JSONL line -> Dialogue; per-utterance problems name line and utterance position."""
    if not isinstance(record, dict):
        raise ValueError("a line must be a JSON object")
    dialogue_id = record.get("dialogue_id")
    if not isinstance(dialogue_id, (str, int)) or str(dialogue_id) == "":
        raise ValueError("missing 'dialogue_id'")
    raw_utts = record.get("utterances")
    if not isinstance(raw_utts, list) or not raw_utts:
        raise ValueError("missing or empty 'utterances' list")
    utterances: list[Utterance] = []
    for u, raw in enumerate(raw_utts):
        where = f"line {line_no}, utterance {u}"
        try:
            if not isinstance(raw, dict):
                raise ValueError("an utterance must be a JSON object")
            names = raw.get("speakers", [raw["speaker"]] if "speaker" in raw else None)
            if not names or not all(isinstance(n, str) for n in names):
                raise ValueError("missing 'speaker' (or 'speakers' list)")
            speakers = tuple(n for n in (_name(v) for v in names) if n)
            if not speakers:
                raise ValueError("empty speaker")
            if not isinstance(raw.get("text"), str):
                raise ValueError("missing 'text'")
            label = raw.get("label")
            utterances.append(
                Utterance(
                    dialogue_id=str(dialogue_id),
                    index=len(utterances),
                    speakers=speakers,
                    text=_text(raw["text"]),
                    label=None if label in (None, "") else _label(str(label), label_set),
                    utterance_id=None if raw.get("utterance_id") is None else str(raw["utterance_id"]),
                    start=_optional_float(raw.get("start")),
                    end=_optional_float(raw.get("end")),
                    media=_mapping(raw.get("media"), "media"),
                    meta=_mapping(raw.get("meta"), "meta"),
                )
            )
        except ValueError as exc:
            sink.fail(where, str(exc))
    if not utterances:
        raise ValueError("no valid utterance left in the dialogue")
    return Dialogue(id=str(dialogue_id), corpus=corpus, split=split, utterances=utterances)


def _mapping(value: Any, key: str) -> dict:
    """An optional JSON object field ({} when absent); ValueError otherwise (media values become strings)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"'{key}' must be a JSON object, got {value!r}")
    return {str(k): str(v) for k, v in value.items()} if key == "media" else dict(value)


def _optional_float(value: Any) -> float | None:
    """A number or None; ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    raise ValueError(f"expected a number of seconds, got {value!r}")


def write_jsonl(dialogues: Iterable[Dialogue], path: str | Path, labels: Iterable[str] | None = None) -> None:
    """Write dialogues in the user JSONL format (the inverse of `load_jsonl`), atomically; `labels` adds the
    declaring first line `{"labels": [...]}`."""
    from erc_llm.io import atomic_write_text

    lines = [] if labels is None else [json.dumps({"labels": list(labels)}, ensure_ascii=False)]
    for dialogue in dialogues:
        utts = []
        for utt in dialogue.utterances:
            item: dict[str, Any] = {"speakers": list(utt.speakers), "text": utt.text}
            for key in ("label", "utterance_id", "start", "end"):
                if getattr(utt, key) is not None:
                    item[key] = getattr(utt, key)
            if utt.media:
                item["media"] = utt.media
            if utt.meta:
                item["meta"] = utt.meta
            utts.append(item)
        lines.append(json.dumps({"dialogue_id": dialogue.id, "utterances": utts}, ensure_ascii=False))
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
