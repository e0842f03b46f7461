"""Labelling in the dialogue-packed layout: line 1 is labelled, its predicted label appended, then line 2, ...

Each step's chat (`erc_llm.prompting.packed.packed_messages`) extends the previous one by the predicted label and
the next line, so a step costs the new line's tokens plus one decoding step: vLLM reuses the prefix through its
prefix cache, `erc_llm.labelling.scorers.HFPackedScorer` keeps each dialogue's KV cache. Inline labels are always the model's own predictions.

Order. Without corpus-scope history the dialogues are independent: step r of every dialogue is one batch. With
corpus-scope history each dialogue's header holds its speakers' predicted emotions in all earlier dialogues (corpus
order: season, episode, scene time), so a dialogue waits for every earlier dialogue that shares a speaker with it.
`dependency_waves` groups the dialogues into waves such that each depends only on earlier waves: the dialogues of a
wave are labelled together (one batch per step, or sharded over processes), with exactly the prompts of labelling
them one after another. A run over a subset of a split sees less history than a full-split run.

Resumable: `done` ({(dialogue_id, index): label}) from an interrupted run is replayed inline and into the history,
so the resumed run builds exactly the prompts the first run would have.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from tqdm.auto import tqdm

from erc_llm.data.schema import Dialogue
from erc_llm.labelling.loop import Labelled, LabelScorer
from erc_llm.prompting.builder import PromptBuilder, PromptExample
from erc_llm.prompting.history import EmotionHistory, history_key
from erc_llm.prompting.packed import (
    check_packed_template,
    chronological_order,
    dialogue_start_keys,
    header_messages,
    packed_messages,
    scene_history,
    scene_speakers,
)

Messages = list[dict[str, str]]


def _argmax(scores: Mapping[str, float]) -> str:
    return max(scores, key=lambda label: scores[label])


def _score(scorer, streams: list[str], prompts: list[Messages]) -> list[dict[str, float]]:
    """Scores from a stream-aware scorer (kept KV caches) or any `LabelScorer`."""
    if hasattr(scorer, "score_streams"):
        return scorer.score_streams(list(zip(streams, prompts)))
    return scorer.score(prompts)


def dependency_waves(builder: PromptBuilder, ordered: Sequence[Dialogue], linked: bool) -> list[list[Dialogue]]:
    """Dialogues (in corpus order) grouped so that each shares no speaker with a later-placed earlier dialogue:
    wave(d) = 1 + the latest wave of any chronologically earlier dialogue with one of d's speakers."""
    if not linked:
        return [list(ordered)] if ordered else []
    level: dict[str, int] = {}
    waves: list[list[Dialogue]] = []
    for d in ordered:
        keys = {s.key for s in scene_speakers(builder, d)}
        wave = 1 + max((level[k] for k in keys if k in level), default=-1)
        for k in keys:
            level[k] = wave
        if wave == len(waves):
            waves.append([])
        waves[wave].append(d)
    return waves


def label_dialogues_packed(
    dialogues: Sequence[Dialogue],
    builder: PromptBuilder,
    scorer: LabelScorer,
    done: Mapping[tuple[str, int], str] | None = None,
    on_batch: Callable[[list[Labelled]], None] | None = None,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    exchange: Callable[[list[Labelled]], list[Labelled]] | None = None,
) -> list[Labelled]:
    """Label every utterance not in `done`, wave by wave in packed chats (see module docstring).

    Several processes: `shard=(rank, world)` gives each the wave's dialogues i % world == rank, and `exchange`
    (e.g. an all-gather) turns this process's labelled items of a wave into every process's, so the histories
    stay identical everywhere; every process then returns all items.
    """
    check_packed_template(builder)
    cfg = builder.config
    done = dict(done or {})
    ordered = chronological_order(dialogues)
    starts = dialogue_start_keys(ordered)
    linked = cfg.needs_rounds and cfg.history_scope == "corpus"
    tracker = EmotionHistory("corpus") if linked else None
    rank, world = shard
    if world > 1 and exchange is None:
        raise ValueError("labelling sharded over processes needs an `exchange` (all-gather) after each wave")
    waves = dependency_waves(builder, ordered, linked)
    total = sum(1 for d in ordered for u in d if u.key not in done)
    bar = tqdm(total=total, desc="labelling (packed)", unit="utt", disable=not progress)
    results: list[Labelled] = []
    for all_of_wave in waves:
        wave = [d for i, d in enumerate(all_of_wave) if i % world == rank]
        predicted: dict[str, list[str]] = {d.id: [] for d in all_of_wave}
        before = len(results)
        heads = {d.id: header_messages(builder, d, scene_history(builder, d, tracker, starts[d.id])) for d in wave}
        for r in range(max((len(d) for d in wave), default=0)):
            batch = []
            for d in wave:
                if r >= len(d):
                    continue
                if (d.id, r) in done:
                    predicted[d.id].append(done[(d.id, r)])
                else:
                    batch.append(d)
            if not batch:
                continue
            prompts = [packed_messages(builder, d, 0, r + 1, predicted[d.id], None, header=heads[d.id]) for d in batch]
            scores = _score(scorer, [d.id for d in batch], prompts)
            labelled = []
            for d, messages, s in zip(batch, prompts, scores):
                utt = d.utterances[r]
                example = PromptExample(dialogue_id=d.id, index=r, utterance_id=utt.utterance_id, speaker=utt.speaker,
                                        text=utt.text, messages=messages, label=utt.label)
                item = Labelled(example, _argmax(s), s)
                predicted[d.id].append(item.pred)
                labelled.append(item)
            results.extend(labelled)
            if on_batch is not None:
                on_batch(labelled)
            bar.update(len(labelled))
        if hasattr(scorer, "end_streams"):
            scorer.end_streams([d.id for d in wave])
        if exchange is not None:
            mine = results[before:]
            del results[before:]
            everyone = exchange(mine)
            results.extend(everyone)
            by_line = {**{item.example.key: item.pred for item in everyone}, **done}
            predicted = {d.id: [by_line[u.key] for u in d.utterances if u.key in by_line] for d in all_of_wave}
        if tracker is not None:
            for d in all_of_wave:
                for utt, label in zip(d.utterances, predicted[d.id]):
                    tracker.add(history_key(builder.registry, utt), d.id, (*starts[d.id][:-1], utt.index), label,
                                utt.index)
    bar.close()
    return results
