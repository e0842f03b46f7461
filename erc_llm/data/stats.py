"""Corpus statistics: sizes, speakers and label distribution per split, as a Markdown table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from erc_llm.data.schema import LoadedSplit


def split_stats(loaded: LoadedSplit, labels: Iterable[str]) -> dict:
    """Counts for one split: utterances, dialogues, speakers, label shares, dialogue length, words."""
    label_counts = Counter(u.label for u in loaded.utterances())
    lengths = [len(d) for d in loaded.dialogues]
    words = [len(u.text.split()) for u in loaded.utterances()]
    n = loaded.n_utterances
    return {
        "corpus": loaded.corpus,
        "split": loaded.split,
        "utterances": n,
        "dialogues": len(loaded.dialogues),
        "speakers": len({s for u in loaded.utterances() for s in u.speakers}),
        "multi_speaker_utterances": sum(1 for u in loaded.utterances() if len(u.speakers) > 1 or " and " in u.speaker),
        "mean_dialogue_length": round(sum(lengths) / max(len(lengths), 1), 2),
        "max_dialogue_length": max(lengths, default=0),
        "mean_words": round(sum(words) / max(len(words), 1), 2),
        "labels": {label: label_counts.get(label, 0) for label in labels},
        "unlabeled": label_counts.get(None, 0),
        "skipped": len(loaded.skipped),
    }


def stats_table(rows: list[dict]) -> str:
    """Markdown table of `split_stats` rows (label columns as count and share)."""
    if not rows:
        return "(no splits)"
    labels = list(rows[0]["labels"])
    head = ["corpus", "split", "utts", "dialogues", "speakers", "mean len", "words/utt", *labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        shares = [f"{r['labels'][lab]} ({100 * r['labels'][lab] / max(r['utterances'], 1):.1f}%)" for lab in labels]
        cells = [r["corpus"], r["split"], r["utterances"], r["dialogues"], r["speakers"], r["mean_dialogue_length"],
                 r["mean_words"], *shares]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)
