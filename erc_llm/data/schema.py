"""The one schema every loader produces: a dialogue is an ordered list of utterances."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from erc_llm.data.errors import SkippedRow


@dataclass(frozen=True)
class Utterance:
    """One line of a dialogue.

    `index` is the 0-based position inside the dialogue as loaded; `utterance_id` is the corpus's own id
    (EmoryNLP ids skip numbers, so the two differ). `speakers` holds the raw speaker names (several for a
    line said together, e.g. MELD's "Monica and Rachel"). `label` is the canonical lowercase emotion or
    None for unlabeled input. `start`/`end` are seconds from the start of the episode when known. `media`
    maps a modality name ("audio", "video", "visual_features", ...) to a path or feature-store key.
    """

    dialogue_id: str
    index: int
    speakers: tuple[str, ...]
    text: str
    label: str | None = None
    utterance_id: str | None = None
    start: float | None = None
    end: float | None = None
    media: dict[str, str] = field(default_factory=dict, compare=False)
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def speaker(self) -> str:
        """All speakers as one display string ("Monica and Rachel" for a joint line)."""
        return " and ".join(self.speakers)

    @property
    def key(self) -> tuple[str, int]:
        """(dialogue_id, index): the key predictions are aligned on."""
        return (self.dialogue_id, self.index)


@dataclass
class Dialogue:
    """An ordered conversation from one corpus split (a MELD dialogue, an EmoryNLP scene, a user's JSONL line)."""

    id: str
    corpus: str
    split: str
    utterances: list[Utterance]

    def __len__(self) -> int:
        return len(self.utterances)

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self.utterances)

    def __getitem__(self, index: int) -> Utterance:
        return self.utterances[index]


@dataclass
class LoadedSplit:
    """The dialogues read from one file, plus any rows explicitly skipped (never silently dropped)."""

    corpus: str
    split: str
    path: str
    dialogues: list[Dialogue]
    skipped: list[SkippedRow] = field(default_factory=list)

    def utterances(self) -> Iterator[Utterance]:
        """All utterances in dialogue order."""
        for dialogue in self.dialogues:
            yield from dialogue.utterances

    @property
    def n_utterances(self) -> int:
        return sum(len(d) for d in self.dialogues)

    def __len__(self) -> int:
        return len(self.dialogues)
