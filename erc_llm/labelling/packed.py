"""Labelling in the dialogue-packed layout: line 1 is labelled, its predicted label appended, then line 2, ...

Each step's chat (`erc_llm.prompting.packed.packed_messages`) extends the previous one by the predicted label and
the next line, so a step costs the new line's tokens plus one decoding step: vLLM reuses the prefix through its
prefix cache, `HFPackedScorer` keeps each dialogue's KV cache. Inline labels are always the model's own predictions.

Order. Without corpus-scope history the dialogues are independent: step r of every dialogue is one batch. With
corpus-scope history each dialogue's header holds its speakers' predicted emotions in all earlier dialogues, so
dialogues are labelled one after another in corpus order (season, episode, scene time); a run over a subset of a
split therefore sees less history than a full-split run (its first dialogue starts with none).

Resumable: `done` ({(dialogue_id, index): label}) from an interrupted run is replayed inline and into the history,
so the resumed run builds exactly the prompts the first run would have.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from erc_llm.data.schema import Dialogue
from erc_llm.labelling.loop import Labelled, LabelScorer
from erc_llm.prompting.answer import label_tokens
from erc_llm.prompting.builder import PromptBuilder, PromptExample
from erc_llm.prompting.history import EmotionHistory, history_key
from erc_llm.prompting.packed import (
    check_packed_template,
    chronological_order,
    dialogue_start_keys,
    header_messages,
    packed_messages,
    scene_history,
)
from erc_llm.training.data import chat_prompt_ids

Messages = list[dict[str, str]]


def _argmax(scores: Mapping[str, float]) -> str:
    return max(scores, key=lambda label: scores[label])


def _score(scorer, streams: list[str], prompts: list[Messages]) -> list[dict[str, float]]:
    """Scores from a stream-aware scorer (kept KV caches) or any `LabelScorer`."""
    if hasattr(scorer, "score_streams"):
        return scorer.score_streams(list(zip(streams, prompts)))
    return scorer.score(prompts)


def label_dialogues_packed(
    dialogues: Sequence[Dialogue],
    builder: PromptBuilder,
    scorer: LabelScorer,
    done: Mapping[tuple[str, int], str] | None = None,
    on_batch: Callable[[list[Labelled]], None] | None = None,
    progress: bool = True,
) -> list[Labelled]:
    """Label every utterance not in `done`, dialogue by dialogue in packed chats (see module docstring)."""
    check_packed_template(builder)
    cfg = builder.config
    done = dict(done or {})
    ordered = chronological_order(dialogues)
    starts = dialogue_start_keys(ordered)
    linked = cfg.needs_rounds and cfg.history_scope == "corpus"
    tracker = EmotionHistory("corpus") if linked else None
    waves = [[d] for d in ordered] if linked else [ordered]
    total = sum(1 for d in ordered for u in d if u.key not in done)
    bar = tqdm(total=total, desc="labelling (packed)", unit="utt", disable=not progress)
    results: list[Labelled] = []
    for wave in waves:
        predicted: dict[str, list[str]] = {d.id: [] for d in wave}
        heads = {d.id: header_messages(builder, d, scene_history(builder, d, tracker, starts[d.id])) for d in wave}
        for r in range(max(len(d) for d in wave)):
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
        if tracker is not None:
            for d in wave:
                for utt, label in zip(d.utterances, predicted[d.id]):
                    tracker.add(history_key(builder.registry, utt), d.id, (*starts[d.id][:-1], utt.index), label,
                                utt.index)
    bar.close()
    return results


class HFPackedScorer:
    """Label scoring with a transformers model that keeps one KV cache per dialogue ("stream").

    A step's prompt must extend the stream's previous prompt (the packed layout guarantees it); only the new
    tokens are run. Per-label probabilities as in `erc_llm.training.scoring.HFLabelScorer`: softmax over the
    labels' first-token log-probabilities, or over whole-label log-probabilities when first tokens collide.
    """

    def __init__(self, model, tokenizer, labels: Sequence[str], autocast_dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.answer = label_tokens(tokenizer, self.labels)
        self.autocast_dtype = autocast_dtype
        self.streams: dict[str, tuple[list[int], object]] = {}
        self.prompt_tokens = 0  # tokens actually run through the model
        self.cached_tokens = 0  # prompt tokens served from a kept cache

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    @contextlib.contextmanager
    def _inference(self):
        """Eval mode, no grad; frozen bf16 CPU weights flagged trainable meanwhile (their frozen matmul path is
        several times slower in this torch build, see `HFLabelScorer.score`)."""
        was_training = self.model.training
        self.model.eval()
        frozen = [p for p in self.model.parameters() if not p.requires_grad] if self.device.type == "cpu" else []
        for param in frozen:
            param.requires_grad_(True)
        try:
            with torch.inference_mode(), self._autocast():
                yield
        finally:
            for param in frozen:
                param.requires_grad_(False)
            if was_training:
                self.model.train()

    def score(self, prompts: Sequence[Messages]) -> list[dict[str, float]]:
        """Stateless scoring (every prompt from scratch)."""
        return [self._step(None, m) for m in prompts]

    def score_streams(self, items: Sequence[tuple[str, Messages]]) -> list[dict[str, float]]:
        """Score each (stream id, prompt), reusing and extending the stream's KV cache."""
        return [self._step(stream, messages) for stream, messages in items]

    def end_streams(self, streams: Sequence[str]) -> None:
        """Free finished dialogues' caches."""
        for stream in streams:
            self.streams.pop(stream, None)

    def _step(self, stream: str | None, messages: Messages) -> dict[str, float]:
        from transformers import DynamicCache

        ids = chat_prompt_ids(self.tokenizer, messages)
        previous, cache = self.streams.get(stream, ([], None)) if stream is not None else ([], None)
        if cache is None or len(previous) >= len(ids) or ids[: len(previous)] != previous:
            previous, cache = [], DynamicCache()
        new = ids[len(previous):]
        self.prompt_tokens += len(new)
        self.cached_tokens += len(previous)
        with self._inference():
            out = self.model(input_ids=torch.tensor([new], device=self.device), past_key_values=cache, use_cache=True,
                             logits_to_keep=1)
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            if self.answer.first_token_unique:
                scores = first[self.answer.first_ids]
            else:
                scores = self._sequence_scores(first, out.past_key_values, len(ids))
        if stream is not None:
            self.streams[stream] = (ids, out.past_key_values)
        probs = torch.softmax(scores, dim=-1).tolist()
        return dict(zip(self.labels, probs))

    def _sequence_scores(self, first: torch.Tensor, cache, length: int) -> torch.Tensor:
        """Whole-label log-probabilities continuing from a copy of the prompt's cache."""
        scores = torch.stack([first[self.answer.ids[label][0]] for label in self.labels])
        for j, label in enumerate(self.labels):
            seq = self.answer.ids[label]
            if len(seq) < 2:
                continue
            cont = self.model(input_ids=torch.tensor([list(seq[:-1])], device=self.device),
                              past_key_values=copy.deepcopy(cache), use_cache=True)
            logp = torch.log_softmax(cont.logits[0].float(), dim=-1)
            scores[j] = scores[j] + logp[torch.arange(len(seq) - 1), torch.tensor(seq[1:])].sum()
        return scores
