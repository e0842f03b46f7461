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
    shard: tuple[int, int] = (0, 1),
    exchange: Callable[[list[Labelled]], list[Labelled]] | None = None,
) -> list[Labelled]:
    """Label all utterances not already in `done` ({key: predicted label}, e.g. from a resumed run).

    Predictions in `done` feed the history exactly like fresh ones, so a resumed run builds the same prompts.
    `on_batch` is called after each scored batch (for incremental, atomic output). Several processes:
    `shard=(rank, world)` gives each every world-th target of a round and `exchange` (an all-gather) shares the
    round's predictions, so every process keeps the same history and returns all items.
    """
    rank, world = shard
    if world > 1 and exchange is None:
        raise ValueError("labelling sharded over processes needs an `exchange` (all-gather) after each round")
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
    for all_targets in rounds:
        targets = all_targets[rank::world]
        before = len(results)
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
        if exchange is not None:
            mine = results[before:]
            del results[before:]
            results.extend(exchange(mine))
        if tracker is not None:
            for item in results[before:]:
                dialogue, utt = by_key[item.example.key]
                tracker.add(history_key(builder.registry, utt), dialogue.id, keys[utt.key], item.pred, utt.index)
    bar.close()
    return results


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather(items: list[Labelled]) -> list[Labelled]:
    """Every process's items (in rank order)."""
    import torch.distributed as dist

    gathered: list[list[Labelled] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in (part or [])]


def label_split(
    dialogues: Sequence[Dialogue], builder: PromptBuilder, scorer: LabelScorer, batch_size: int = 64,
    progress: bool = True,
) -> list[Labelled]:
    """Label a split in either prompt layout, in this process or shared over the training processes.

    Independent targets (no predicted history, or dialogue-scope history) are sharded by dialogue and gathered once;
    chained ones (corpus-scope predicted history) are sharded inside each round (per-utterance layout) or each
    dependency wave (packed layout) and exchanged after it, so every process labels a share and all processes see
    the same history, prompts and predictions as one process would. Every process returns all items.
    """
    from erc_llm.labelling.packed import label_dialogues_packed

    rank, world = _world()
    cfg = builder.config
    chained = cfg.needs_rounds and cfg.history_scope == "corpus"
    show = progress and rank == 0
    if world > 1 and chained:
        kwargs = {"shard": (rank, world), "exchange": _all_gather, "progress": show}
        mine = dialogues
    else:
        kwargs = {"progress": show}
        mine = [d for i, d in enumerate(dialogues) if i % world == rank]
    if cfg.layout == "packed":
        labelled = label_dialogues_packed(mine, builder, scorer, **kwargs)
    else:
        labelled = label_dialogues(mine, builder, scorer, batch_size=batch_size, **kwargs)
    if world > 1 and not chained:
        labelled = _all_gather(labelled)
    return sorted(labelled, key=lambda item: item.example.key)
