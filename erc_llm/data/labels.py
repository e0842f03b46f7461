"""Label sets per corpus: canonical lowercase names, raw-label mapping and a cross-corpus table."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LabelSet:
    """The emotion classes of one corpus.

    `labels` are the canonical lowercase names, in a fixed order (used for metric tables, confusion
    matrices, SFT targets and vLLM `choice` options alike). `aliases` maps raw spellings found in files
    (compared case-insensitively) to canonical names.
    """

    name: str
    labels: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"label set {self.name!r} has duplicate labels: {self.labels}")
        for label in self.labels:
            if label != label.strip().lower():
                raise ValueError(f"label set {self.name!r}: label {label!r} is not canonical lowercase")

    def __contains__(self, label: object) -> bool:
        return label in self.labels

    def __iter__(self):
        return iter(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def index(self, label: str) -> int:
        """Position of a canonical label."""
        return self.labels.index(label)

    def canonical(self, raw: str) -> str | None:
        """Canonical name for a raw label string, or None if it is not one of this set's labels."""
        key = raw.strip().lower()
        if key in self.labels:
            return key
        return self.aliases.get(key)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"name": self.name, "labels": list(self.labels), "aliases": dict(self.aliases)}

    @classmethod
    def from_dict(cls, data: Mapping) -> LabelSet:
        """Inverse of `to_dict`."""
        return cls(name=data["name"], labels=tuple(data["labels"]), aliases=dict(data.get("aliases", {})))

    @classmethod
    def from_labels(cls, name: str, labels: Iterable[str]) -> LabelSet:
        """A label set from plain names (lowercased)."""
        return cls(name=name, labels=tuple(label.strip().lower() for label in labels))


MELD_LABELS = LabelSet(
    name="meld",
    labels=("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"),
)

EMORYNLP_LABELS = LabelSet(
    name="emorynlp",
    labels=("neutral", "joyful", "peaceful", "powerful", "scared", "mad", "sad"),
)

# IEMOCAP's usual 6-class setting (as in most ERC papers); no corpus loader ships for it: bring it as CSV/JSONL.
IEMOCAP_LABELS = LabelSet(
    name="iemocap",
    labels=("happy", "sad", "neutral", "angry", "excited", "frustrated"),
    aliases={"hap": "happy", "neu": "neutral", "ang": "angry", "exc": "excited", "fru": "frustrated"},
)

LABEL_SETS: dict[str, LabelSet] = {"meld": MELD_LABELS, "emorynlp": EMORYNLP_LABELS, "iemocap": IEMOCAP_LABELS}

# Coarse cross-corpus mapping onto MELD's Ekman-style classes, for cross-corpus analysis only
# (never for training targets). EmoryNLP follows Willcox's feeling wheel; "peaceful" and "powerful"
# are positive-valence states without a direct Ekman counterpart, mapped to the nearest class.
CROSS_CORPUS_MAP: dict[str, dict[str, str]] = {
    "emorynlp->meld": {
        "neutral": "neutral",
        "joyful": "joy",
        "peaceful": "neutral",
        "powerful": "joy",
        "scared": "fear",
        "mad": "anger",
        "sad": "sadness",
    },
}


def get_label_set(name: str) -> LabelSet:
    """A label set by known name (meld, emorynlp, iemocap), comma-separated list or labels .txt/.json file."""
    from erc_llm.data.sources import resolve_labels

    return resolve_labels(name)
