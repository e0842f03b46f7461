"""Training sequences of the dialogue-packed layout: one sequence per dialogue (or chunk), a label loss at every line.

Each dialogue is rendered by `erc_llm.prompting.packed.packed_messages` with its labels inline and tokenised with
the model's chat template. Each label sits where its line's labelling prompt ends (checked: that prompt's ids are a
prefix of the sequence), in either kind of packed template. For every line the label's tokens (and the token after
them when `with_end`: the end of turn, or a transcript's newline) are targets, each weighted by its gold class's weight; everything else is -100. A dialogue longer than `max_length`
is cut into chunks of whole lines, each starting with the header again.

Exposure bias. At test time the inline labels are the model's own predictions, in training they are gold. With
`label_noise = p`, a fraction p of the inline labels *shown* to later lines is replaced by a label drawn from the
training label distribution (other than gold); the loss at that line still targets the gold label's first token
(the rest of that answer is not trained, as its tokens are the replacement's).

The noise is random; a model's own errors are not (it repeats its previous label). `inline_labels` shows instead an
earlier model's predictions on the training split (`load_inline_predictions`, from `erc-llm label --split train`),
so training sees inline labels with the errors a labeller makes; targets stay gold, as with noise.
`show_inline_labels` does the same inside a training step, on a collated batch: the trainer's
`packed_inline_self_predictions` shows the model's own predictions of that step (no earlier model, no labelling
stage).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset

from erc_llm.data.schema import Dialogue
from erc_llm.prompting.answer import LabelTokens
from erc_llm.prompting.builder import PromptBuilder
from erc_llm.prompting.history import EmotionHistory
from erc_llm.prompting.packed import (
    check_packed_template,
    dialogue_start_keys,
    header_messages,
    packed_messages,
    scene_history,
)
from erc_llm.prompting.templates import chat_ids
from erc_llm.training.data import IGNORE_INDEX


@dataclass
class PackedStats:
    """What packing did."""

    dialogues: int
    sequences: int
    targets: int  # labelled lines trained
    chunked_dialogues: int
    mean_length: float
    max_length: int
    noised_labels: int
    predicted_inline_labels: int = 0  # inline labels taken from `inline_labels` that differ from gold

    @property
    def tokens_per_target(self) -> float:
        return self.mean_length * self.sequences / max(1, self.targets)


def _answer_positions(tokenizer, prompts: Sequence[list[dict[str, str]]], full: list[int]) -> list[int]:
    """Token offset of each answer in `full`: the length of its line's labelling prompt, whose ids must be a prefix
    of `full`."""
    positions = []
    for messages in prompts:
        prompt = chat_ids(tokenizer, messages, add_generation_prompt=True)
        if full[: len(prompt)] != prompt:
            raise ValueError(
                "the chat template does not render a conversation as a prefix of its continuation; the packed "
                "layout needs one that does (ChatML, Llama-3 and most instruct templates do)"
            )
        positions.append(len(prompt))
    return positions


def line_prompts(builder: PromptBuilder, dialogue: Dialogue, start: int, end: int, shown: Sequence[str],
                 head: tuple[str, str]) -> list[list[dict[str, str]]]:
    """The labelling prompt of each line of [start, end) with `shown` (one per line) as the earlier inline labels."""
    return [packed_messages(builder, dialogue, start, i + 1, shown[: i - start], None, header=head)
            for i in range(start, end)]


def tokenise_chunk(
    tokenizer, messages: list[dict[str, str]], prompts: Sequence[list[dict[str, str]]], gold: Sequence[str],
    shown: Sequence[str], answer: LabelTokens, weights: dict[str, float], with_end: bool,
) -> tuple[list[int], list[int], list[float]]:
    """(input_ids, labels, label_weights) of one finished chunk `messages` whose lines' labelling prompts are
    `prompts`; `shown` are the inline labels, `gold` the targets. With `with_end` the token after a gold answer
    (the end of turn, or a transcript's newline) is a target too."""
    full = chat_ids(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(full)
    label_weights = [0.0] * len(full)
    for at, target, inline in zip(_answer_positions(tokenizer, prompts, full), gold, shown):
        ids = list(answer.ids[inline])
        if full[at: at + len(ids)] != ids:
            raise ValueError(f"label {inline!r} is not tokenised as {ids} inside the packed chat")
        weight = float(weights.get(target, 1.0))
        if inline == target:
            tail = full[at + len(ids): at + len(ids) + 1] if with_end else []
            for k, token in enumerate(ids + tail):
                labels[at + k] = token
                label_weights[at + k] = weight
        else:  # a noised inline label: train only the gold first token, predicted from the same context
            labels[at] = answer.ids[target][0]
            label_weights[at] = weight
    return full, labels, label_weights


def _chunks(lengths: Sequence[int], header: int, max_length: int | None) -> list[tuple[int, int]]:
    """Whole-line chunks whose estimated length (header + their turns) fits max_length."""
    if max_length is None:
        return [(0, len(lengths))]
    chunks, start, size = [], 0, header
    for i, n in enumerate(lengths):
        if size + n > max_length and i > start:
            chunks.append((start, i))
            start, size = i, header
        size += n
    chunks.append((start, len(lengths)))
    return chunks


def build_packed_train_dataset(
    dialogues: Sequence[Dialogue], builder: PromptBuilder, tokenizer, answer: LabelTokens,
    weights: dict[str, float], max_length: int | None, with_end: bool = True, label_noise: float = 0.0,
    seed: int = 0, history: EmotionHistory | None = None, inline_labels: Mapping[str, Sequence[str]] | None = None,
) -> tuple[Dataset, PackedStats]:
    """A `datasets.Dataset` of packed sequences (input_ids, labels, label_weights, weight, length, targets).

    `history` is a gold-label tracker over the training split (`builder.gold_history`) when history is on.
    `inline_labels` (dialogue id -> one label per line) replaces the gold labels shown inline, before any noise.
    """
    check_packed_template(builder)
    rng = random.Random(seed)
    prior = [u.label for d in dialogues for u in d if u.label is not None]
    starts = dialogue_start_keys(dialogues)
    rows: dict[str, list] = {"input_ids": [], "labels": [], "label_weights": [], "weight": [], "length": [],
                             "targets": []}
    chunked = noised = predicted = targets = 0
    for dialogue in dialogues:
        if not dialogue.utterances:
            continue
        gold = [u.label for u in dialogue.utterances]
        if any(label is None for label in gold):
            raise ValueError(f"{dialogue.id}: the packed layout trains on fully labelled dialogues; "
                             f"line(s) {[i for i, g in enumerate(gold) if g is None]} have no label")
        shown = list(gold) if inline_labels is None else list(inline_labels[dialogue.id])
        if len(shown) != len(gold):
            raise ValueError(f"{dialogue.id}: {len(shown)} inline labels for {len(gold)} lines")
        predicted += sum(s != g for s, g in zip(shown, gold))
        if label_noise > 0:
            for i, label in enumerate(gold):
                if rng.random() < label_noise:
                    others = [p for p in prior if p != label]
                    if others:
                        shown[i] = rng.choice(others)
                        noised += 1
        head = header_messages(builder, dialogue, scene_history(builder, dialogue, history, starts[dialogue.id]))
        whole = packed_messages(builder, dialogue, 0, len(dialogue), shown, None, header=head)
        prompts = line_prompts(builder, dialogue, 0, len(dialogue), shown, head)
        ids, labels, label_weights = tokenise_chunk(tokenizer, whole, prompts, gold, shown, answer, weights, with_end)
        pieces = [(ids, labels, label_weights, len(gold))]
        if max_length is not None and len(ids) > max_length:
            chunked += 1
            header_len = len(chat_ids(tokenizer, packed_messages(builder, dialogue, 0, 1, [], None, header=head),
                                      add_generation_prompt=True))
            per_line = _line_lengths(tokenizer, builder, dialogue, shown, head)
            pieces = []
            for lo, hi in _chunks(per_line, header_len, max_length):
                messages = packed_messages(builder, dialogue, lo, hi, shown[lo:hi], None, header=head)
                c_ids, c_labels, c_weights = tokenise_chunk(
                    tokenizer, messages, line_prompts(builder, dialogue, lo, hi, shown[lo:hi], head), gold[lo:hi],
                    shown[lo:hi], answer, weights, with_end)
                if len(c_ids) > max_length:
                    raise ValueError(f"{dialogue.id}: line(s) {lo + 1}-{hi} do not fit max_length {max_length} "
                                     f"with the header ({len(c_ids)} tokens); raise max_length")
                pieces.append((c_ids, c_labels, c_weights, hi - lo))
        for p_ids, p_labels, p_weights, n in pieces:
            rows["input_ids"].append(p_ids)
            rows["labels"].append(p_labels)
            rows["label_weights"].append(p_weights)
            rows["weight"].append(1.0)
            rows["length"].append(len(p_ids))
            rows["targets"].append(n)
            targets += n
    lengths = rows["length"] or [0]
    stats = PackedStats(dialogues=len(dialogues), sequences=len(rows["input_ids"]), targets=targets,
                        chunked_dialogues=chunked, mean_length=sum(lengths) / len(lengths), max_length=max(lengths),
                        noised_labels=noised, predicted_inline_labels=predicted)
    return Dataset.from_dict(rows), stats


def answer_spans(batch: dict[str, torch.Tensor], answer: LabelTokens) -> list[tuple[int, int, str]]:
    """(first target index, first label token's position, gold label) of each answer in a padding-free packed
    batch whose inline labels are gold (every answer trains its label tokens, and the end token when present)."""
    firsts = {answer.ids[label][0]: label for label in answer.labels}
    ids = batch["input_ids"][0].tolist()
    cols = batch["target_cols"].tolist()
    targets = batch["target_ids"].tolist()
    spans = []
    for t in torch.nonzero(batch["target_first"]).flatten().tolist():
        gold = firsts.get(targets[t])
        start = cols[t] + 1
        if gold is None or ids[start: start + len(answer.ids[gold])] != list(answer.ids[gold]):
            raise ValueError("self-predicted inline labels need a packed batch whose inline labels are gold, each "
                             "answer trained on its whole label (no packed_label_noise, no packed_inline_predictions)")
        spans.append((t, start, gold))
    return spans


def show_inline_labels(batch: dict[str, torch.Tensor], shown: Sequence[str | None], answer: LabelTokens,
                       spans: list[tuple[int, int, str]] | None = None) -> dict[str, torch.Tensor]:
    """The padding-free packed batch (gold inline labels) with answer k's inline label replaced by `shown[k]`
    (None: kept). A replaced answer trains only the gold label's first token, predicted from the same context
    (as with `label_noise` and `inline_labels`, so the result equals the batch `build_packed_train_dataset` makes
    with those labels inline); later tokens move and positions restart per sequence as before. `spans`: the
    batch's `answer_spans`, when the caller has them already."""
    spans = answer_spans(batch, answer) if spans is None else spans
    if len(shown) != len(spans):
        raise ValueError(f"{len(shown)} inline labels for {len(spans)} answers")
    ids = batch["input_ids"][0].tolist()
    restarts = (batch["position_ids"][0] == 0).tolist()
    cols, targets = batch["target_cols"].tolist(), batch["target_ids"].tolist()
    weights, first = batch["target_weights"].tolist(), batch["target_first"].tolist()
    new_ids: list[int] = []
    new_restarts: list[bool] = []
    out: dict[str, list] = {"cols": [], "ids": [], "weights": [], "first": []}
    cursor = 0
    bounds = [t for t, _, _ in spans] + [len(targets)]
    for k, ((t, start, gold), label) in enumerate(zip(spans, shown)):
        new_ids += ids[cursor:start]
        new_restarts += restarts[cursor:start]
        shift = len(new_ids) - start
        end = start + len(answer.ids[gold])
        if label is None or label == gold:
            new_ids += ids[start:end]
            new_restarts += restarts[start:end]
            for j in range(t, bounds[k + 1]):
                out["cols"].append(cols[j] + shift)
                out["ids"].append(targets[j])
                out["weights"].append(weights[j])
                out["first"].append(first[j])
        else:
            out["cols"].append(len(new_ids) - 1)
            out["ids"].append(targets[t])
            out["weights"].append(weights[t])
            out["first"].append(True)
            new_ids += list(answer.ids[label])
            new_restarts += [False] * len(answer.ids[label])
        cursor = end
    new_ids += ids[cursor:]
    new_restarts += restarts[cursor:]
    positions, p = [], -1
    for restart in new_restarts:
        p = 0 if restart else p + 1
        positions.append(p)
    device = batch["input_ids"].device
    return {
        **batch,
        "input_ids": torch.tensor([new_ids], dtype=torch.long, device=device),
        "position_ids": torch.tensor([positions], dtype=torch.long, device=device),
        "target_rows": torch.zeros(len(out["cols"]), dtype=torch.long, device=device),
        "target_cols": torch.tensor(out["cols"], dtype=torch.long, device=device),
        "target_ids": torch.tensor(out["ids"], dtype=torch.long, device=device),
        "target_weights": torch.tensor(out["weights"], dtype=torch.float32, device=device),
        "target_first": torch.tensor(out["first"], dtype=torch.bool, device=device),
    }


def load_inline_predictions(path: str | Path, dialogues: Sequence[Dialogue], labels: Sequence[str]
                            ) -> dict[str, list[str]]:
    """Per training dialogue, an earlier model's predicted label of every line, from its predictions.jsonl.

    Raises ValueError naming the file (and its line) for a label outside `labels`, and naming the first missing
    line and how many are missing when the file does not cover every line of `dialogues` (e.g. it labels dev).
    """
    from erc_llm.evaluation import read_predictions

    source = Path(path)
    by_key: dict[tuple[str, int], str] = {}
    for row, record in enumerate(read_predictions(source), start=1):
        if record.pred not in labels:
            raise ValueError(f"{source}: record {row} ({record.dialogue_id!r} line {record.utterance_index}) "
                             f"predicts {record.pred!r}, not one of {list(labels)}")
        by_key[record.key] = record.pred
    missing = [u.key for d in dialogues for u in d if u.key not in by_key]
    if missing:
        raise ValueError(f"{source} has no prediction for {len(missing)} of the training lines (first: dialogue "
                         f"{missing[0][0]!r} line {missing[0][1]}); label the training split with the same data "
                         f"(erc-llm label --adapter <run> --split train)")
    return {d.id: [by_key[u.key] for u in d] for d in dialogues}


def _line_lengths(tokenizer, builder: PromptBuilder, dialogue: Dialogue, shown: Sequence[str],
                  head: tuple[str, str]) -> list[int]:
    """Tokens each line's turn (user line + answer) adds to the packed chat."""
    previous = 0
    lengths = []
    for i in range(len(dialogue)):
        messages = packed_messages(builder, dialogue, 0, i + 1, shown[: i + 1], None, header=head)
        n = len(chat_ids(tokenizer, messages, add_generation_prompt=False))
        lengths.append(n - previous)
        previous = n
    return lengths
