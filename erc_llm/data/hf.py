"""Conversion between dialogues and `datasets.DatasetDict` (one row per utterance) and back."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from erc_llm.data.schema import Dialogue, LoadedSplit, Utterance

COLUMNS = (
    "corpus", "split", "dialogue_id", "index", "utterance_id", "speakers", "speaker", "text", "label",
    "start", "end", "media", "meta",
)


def utterance_rows(dialogues: Iterable[Dialogue]) -> dict[str, list]:
    """Column-oriented rows (media and meta as JSON strings, so the Arrow schema stays fixed)."""
    columns: dict[str, list] = {c: [] for c in COLUMNS}
    for dialogue in dialogues:
        for utt in dialogue.utterances:
            columns["corpus"].append(dialogue.corpus)
            columns["split"].append(dialogue.split)
            columns["dialogue_id"].append(utt.dialogue_id)
            columns["index"].append(utt.index)
            columns["utterance_id"].append(utt.utterance_id)
            columns["speakers"].append(list(utt.speakers))
            columns["speaker"].append(utt.speaker)
            columns["text"].append(utt.text)
            columns["label"].append(utt.label)
            columns["start"].append(utt.start)
            columns["end"].append(utt.end)
            columns["media"].append(json.dumps(utt.media, sort_keys=True))
            columns["meta"].append(json.dumps(utt.meta, sort_keys=True, default=str))
    return columns


def to_dataset_dict(splits: Mapping[str, LoadedSplit | Iterable[Dialogue]]):
    """{split: dialogues} -> DatasetDict with one row per utterance, in dialogue order."""
    from datasets import Dataset, DatasetDict, Features, List, Value

    features = Features(
        {
            "corpus": Value("string"), "split": Value("string"), "dialogue_id": Value("string"),
            "index": Value("int32"), "utterance_id": Value("string"), "speakers": List(Value("string")),
            "speaker": Value("string"), "text": Value("string"), "label": Value("string"),
            "start": Value("float64"), "end": Value("float64"), "media": Value("string"), "meta": Value("string"),
        }
    )
    out = {}
    for name, split in splits.items():
        dialogues = split.dialogues if isinstance(split, LoadedSplit) else list(split)
        out[name] = Dataset.from_dict(utterance_rows(dialogues), features=features)
    return DatasetDict(out)


def dialogues_from_rows(rows: Iterable[Mapping]) -> list[Dialogue]:
    """Rows of `to_dataset_dict` (any order) -> dialogues with utterances in position order."""
    grouped: dict[str, list[Mapping]] = {}
    meta_of: dict[str, tuple[str, str]] = {}
    for row in rows:
        grouped.setdefault(row["dialogue_id"], []).append(row)
        meta_of.setdefault(row["dialogue_id"], (row["corpus"], row["split"]))
    dialogues = []
    for dialogue_id, items in grouped.items():
        items.sort(key=lambda r: r["index"])
        utterances = [
            Utterance(
                dialogue_id=dialogue_id, index=int(r["index"]), speakers=tuple(r["speakers"]), text=r["text"],
                label=r["label"], utterance_id=r["utterance_id"], start=r["start"], end=r["end"],
                media=json.loads(r["media"] or "{}"), meta=json.loads(r["meta"] or "{}"),
            )
            for r in items
        ]
        corpus, split = meta_of[dialogue_id]
        dialogues.append(Dialogue(id=dialogue_id, corpus=corpus, split=split, utterances=utterances))
    return dialogues
