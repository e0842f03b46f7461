"""The speaker's recent emotion history (EmoNet's speaker-behaviour signal, as text).

Utterances are ordered chronologically across the whole corpus split (season, episode, time or scene, then
position). Training prompts read gold labels of earlier utterances; labelling prompts read the model's own
earlier predictions (dialogue-order rounds), never gold labels.

Visibility rule, the same in training and labelling so both see prompts of one distribution, and
deterministic so a resumed labelling run rebuilds exactly the same prompts: for a target at position r of
its dialogue, the history holds the speaker's emotions on chronologically earlier utterances *at positions
below r* (in the same dialogue that is every earlier line; in earlier dialogues, their first r lines). That
is exactly what a labeller going round by round (position 0 of every dialogue, then 1, ...) has finished.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable

from erc_llm.data.schema import Dialogue, Utterance
from erc_llm.data.speakers import UNKNOWN_ID, SpeakerRegistry, slug

ChronoKey = tuple


def _scene_number(dialogue_id: str) -> float | None:
    """EmoryNLP scene number from 'emorynlp/s01_e02_c03'."""
    match = re.search(r"_c(\d+)$", dialogue_id)
    return float(match.group(1)) if match else None


def chronological_keys(dialogues: Iterable[Dialogue]) -> dict[tuple[str, int], ChronoKey]:
    """(dialogue_id, index) -> a sortable key: season, episode, scene time or number, file order, position."""
    keys: dict[tuple[str, int], ChronoKey] = {}
    for order, dialogue in enumerate(dialogues):
        if not dialogue.utterances:
            continue
        first = dialogue.utterances[0]
        season = _as_number(first.meta.get("season"))
        episode = _as_number(first.meta.get("episode"))
        when = first.start if first.start is not None else _scene_number(dialogue.id)
        for utt in dialogue.utterances:
            keys[utt.key] = (season, episode, when if when is not None else -1.0, order, utt.index)
    return keys


def _as_number(value: object) -> float:
    """Season/episode metadata as a number (-1 when absent)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return -1.0


def history_key(registry: SpeakerRegistry, utt: Utterance) -> str:
    """Whose history an utterance belongs to: the registry id, or a per-name key for unseen speakers."""
    speaker_id = registry.primary_id(utt)
    if speaker_id == UNKNOWN_ID:
        return f"unseen:{slug(utt.speakers[0])}"
    return speaker_id


class EmotionHistory:
    """Per-speaker emotions in chronological order; `scope="dialogue"` keeps only the same dialogue's."""

    def __init__(self, scope: str = "corpus") -> None:
        if scope not in ("corpus", "dialogue"):
            raise ValueError(f"history scope must be 'corpus' or 'dialogue', got {scope!r}")
        self.scope = scope
        self._keys: dict[str, list[ChronoKey]] = {}
        self._labels: dict[str, list[tuple[int, str]]] = {}

    def _bucket(self, speaker: str, dialogue_id: str) -> str:
        return speaker if self.scope == "corpus" else f"{speaker}@{dialogue_id}"

    def add(self, speaker: str, dialogue_id: str, when: ChronoKey, label: str, position: int = 0) -> None:
        """Record one emotion of a speaker at a point in time and dialogue position (any order of calls)."""
        bucket = self._bucket(speaker, dialogue_id)
        keys = self._keys.setdefault(bucket, [])
        labels = self._labels.setdefault(bucket, [])
        at = bisect.bisect_right(keys, when)
        keys.insert(at, when)
        labels.insert(at, (position, label))

    def recent(
        self, speaker: str, dialogue_id: str, before: ChronoKey, window: int, below_position: int | None = None
    ) -> list[str]:
        """The speaker's last `window` emotions strictly before `before` (and at positions < `below_position`)."""
        bucket = self._bucket(speaker, dialogue_id)
        keys = self._keys.get(bucket)
        if not keys or window <= 0:
            return []
        entries = self._labels[bucket]
        found: list[str] = []
        for at in range(bisect.bisect_left(keys, before) - 1, -1, -1):
            position, label = entries[at]
            if below_position is None or position < below_position:
                found.append(label)
                if len(found) == window:
                    break
        return found[::-1]

    def __len__(self) -> int:
        return sum(len(v) for v in self._labels.values())
