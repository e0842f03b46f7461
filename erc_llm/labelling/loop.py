"""Label every utterance of a set of dialogues with any scorer, in dialogue-order rounds when the prompt
uses emotion history: round r labels position r of every dialogue in one batch, so each prompt's history
holds the model's own earlier predictions (never gold labels), and batches still span dialogues."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from tqdm.auto import tqdm

from erc_llm.data.schema import Dialogue
from erc_llm.prompting.builder import PromptBuilder, PromptExample
from erc_llm.prompting.history import EmotionHistory, chronological_keys, history_key


class LabelScorer(Protocol):
    """A backend that gives a probability (or score) per label for each prompt."""

    def score(self, prompts: Sequence[list[dict[str, str]]]) -> list[dict[str, float]]: ...


@dataclass
class Labelled:
    """One labelled utterance."""

    example: PromptExample
    pred: str
    scores: dict[str, float]


def _argmax(scores: Mapping[str, float]) -> str:
    """The best-scoring label (first in label order on ties)."""
    return max(scores, key=lambda label: scores[label])


def label_dialogues(
    dialogues: Sequence[Dialogue],
    builder: PromptBuilder,
    scorer: LabelScorer,
    batch_size: int = 64,
    done: Mapping[tuple[str, int], str] | None = None,
    on_batch: Callable[[list[Labelled]], None] | None = None,
    progress: bool = True,
) -> list[Labelled]:
    """Label all utterances not already in `done` ({key: predicted label}, e.g. from a resumed run).

    Predictions in `done` feed the history exactly like fresh ones, so a resumed run builds the same prompts.
    `on_batch` is called after each scored batch (for incremental, atomic output).
    """
    cfg = builder.config
    done = dict(done or {})
    keys = chronological_keys(dialogues)
    tracker = EmotionHistory(cfg.history_scope) if cfg.needs_rounds else None
    by_key = {(d.id, u.index): (d, u) for d in dialogues for u in d}
    if tracker is not None:
        for key, label in done.items():
            if key in by_key:
                dialogue, utt = by_key[key]
                tracker.add(history_key(builder.registry, utt), dialogue.id, keys[key], label, utt.index)

    if tracker is not None:
        longest = max((len(d) for d in dialogues), default=0)
        rounds = [[(d, r) for d in dialogues if r < len(d) and (d.id, r) not in done] for r in range(longest)]
    else:
        rounds = [[(d, u.index) for d in dialogues for u in d if (d.id, u.index) not in done]]
    total = sum(len(r) for r in rounds)
    results: list[Labelled] = []
    bar = tqdm(total=total, desc="labelling", unit="utt", disable=not progress)
    for targets in rounds:
        for start in range(0, len(targets), batch_size):
            batch = targets[start:start + batch_size]
            examples = []
            for dialogue, index in batch:
                history = None
                if cfg.use_history:
                    history = []
                    if tracker is not None:
                        utt = dialogue.utterances[index]
                        history = tracker.recent(history_key(builder.registry, utt), dialogue.id,
                                                 keys[utt.key], cfg.history_window, below_position=index)
                examples.append(builder.example(dialogue, index, history))
            scores = scorer.score([e.messages for e in examples])
            labelled = [Labelled(e, _argmax(s), s) for e, s in zip(examples, scores)]
            results.extend(labelled)
            if on_batch is not None:
                on_batch(labelled)
            bar.update(len(batch))
        if tracker is not None:
            for item in results[len(results) - len(targets):]:
                dialogue, utt = by_key[item.example.key]
                tracker.add(history_key(builder.registry, utt), dialogue.id, keys[utt.key], item.pred, utt.index)
    bar.close()
    return results
