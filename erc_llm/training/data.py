"""Training data for SFT: subsample the training split, weight classes, tokenise prompts with label-only targets.

Every example becomes `input_ids` (chat-templated prompt + the label word [+ end-of-turn token]), `labels` (-100
everywhere except the answer tokens, so the loss is on the label only), `weight` (the class weight of its gold
label) and `length`. Prompts are rendered by `PromptBuilder.training_examples` (history from gold labels of the
training split only).
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from datasets import Dataset

from erc_llm.data.schema import Dialogue
from erc_llm.prompting.answer import LabelTokens
from erc_llm.prompting.builder import PromptExample
from erc_llm.prompting.templates import chat_prompt_ids

IGNORE_INDEX = -100


def class_quotas(counts: dict[str, int], total: int, strategy: str) -> dict[str, int]:
    """How many examples of each class a subsample of `total` takes (capped by availability, remainder spread)."""
    labels = sorted(counts, key=lambda label: -counts[label])
    power = {"stratified": 1.0, "sqrt": 0.5, "balanced": 0.0}[strategy]
    quotas = dict.fromkeys(labels, 0)
    remaining, open_labels = total, [label for label in labels if counts[label] > 0]
    while remaining > 0 and open_labels:
        mass = sum(counts[label] ** power for label in open_labels)
        shares = {label: remaining * counts[label] ** power / mass for label in open_labels}
        given = 0
        for label in open_labels:
            take = min(int(math.floor(shares[label])), counts[label] - quotas[label])
            quotas[label] += take
            given += take
        if given == 0:  # fewer slots than classes left: give one each, most frequent first
            for label in open_labels[:remaining]:
                quotas[label] += 1
                given += 1
        remaining -= given
        open_labels = [label for label in open_labels if quotas[label] < counts[label]]
    return quotas


def subsample_examples(
    examples: Sequence[PromptExample], size: int | None, strategy: str, seed: int
) -> list[PromptExample]:
    """A seeded subsample of `size` training examples drawn by `strategy` (all when size is None or too big)."""
    if size is None or size >= len(examples):
        return list(examples)
    rng = random.Random(seed)
    if strategy == "random":
        return sorted(rng.sample(list(examples), size), key=lambda e: e.key)
    by_label: dict[str, list[PromptExample]] = defaultdict(list)
    for example in examples:
        by_label[example.label].append(example)
    quotas = class_quotas({label: len(items) for label, items in by_label.items()}, size, strategy)
    chosen = [e for label in sorted(by_label) for e in rng.sample(by_label[label], quotas[label])]
    return sorted(chosen, key=lambda e: e.key)


def subsample_dialogues(dialogues: Sequence[Dialogue], size: int | None, seed: int) -> list[Dialogue]:
    """Whole dialogues drawn at random until about `size` utterances (history stays valid); all when None."""
    if size is None or size >= sum(len(d) for d in dialogues):
        return list(dialogues)
    order = list(range(len(dialogues)))
    random.Random(seed).shuffle(order)
    chosen, total = [], 0
    for i in order:
        if total >= size:
            break
        chosen.append(i)
        total += len(dialogues[i])
    return [dialogues[i] for i in sorted(chosen)]


def class_weights(labels: Sequence[str], scheme: str, max_weight: float = 10.0) -> dict[str, float]:
    """Per-class loss weights from label counts, normalised to mean 1 over the examples, clipped to max_weight.

    'inverse': w_c = N / (K * n_c) (scikit-learn's 'balanced'; its example-mean is exactly 1).
    'sqrt_inverse': w_c proportional to n_c ** -0.5, rescaled so that sum_i w_(y_i) = N.
    'none': all 1. Clipping happens after normalisation, so a clipped run's mean can fall below 1.
    """
    counts = Counter(labels)
    if scheme == "none" or not counts:
        return dict.fromkeys(counts, 1.0)
    power = {"inverse": 1.0, "sqrt_inverse": 0.5}[scheme]
    raw = {label: n ** -power for label, n in counts.items()}
    scale = len(labels) / sum(raw[label] * n for label, n in counts.items())
    return {label: min(max_weight, raw[label] * scale) for label in sorted(counts)}


@dataclass
class TokenisedStats:
    """What tokenisation did to the examples."""

    n: int
    truncated: int
    mean_length: float
    max_length: int


def tokenise_example(
    tokenizer, messages: list[dict[str, str]], label: str, answer: LabelTokens, max_length: int | None,
    with_end: bool = True,
) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, truncated): prompt with generation prompt, then the label ids [+ end-of-turn]."""
    prompt = chat_prompt_ids(tokenizer, messages)
    target = list(answer.ids[label]) + (list(answer.end_ids[:1]) if with_end else [])
    truncated = False
    if max_length is not None and len(prompt) + len(target) > max_length:
        keep = max_length - len(target)
        if keep < 8:
            raise ValueError(f"max_length {max_length} leaves no room for the prompt")
        prompt = prompt[len(prompt) - keep:]  # drop the oldest tokens; the question and answer stay
        truncated = True
    return prompt + target, [IGNORE_INDEX] * len(prompt) + target, truncated


def build_train_dataset(
    examples: Sequence[PromptExample], tokenizer, answer: LabelTokens, weights: dict[str, float],
    max_length: int | None, with_end: bool = True,
) -> tuple[Dataset, TokenisedStats]:
    """A `datasets.Dataset` of input_ids / labels / weight / length ready for the collator."""
    rows: dict[str, list] = {"input_ids": [], "labels": [], "weight": [], "length": []}
    truncated = 0
    for example in examples:
        ids, labels, cut = tokenise_example(tokenizer, example.messages, example.label, answer, max_length, with_end)
        truncated += cut
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
        rows["weight"].append(float(weights.get(example.label, 1.0)))
        rows["length"].append(len(ids))
    lengths = rows["length"] or [0]
    stats = TokenisedStats(len(examples), truncated, sum(lengths) / len(lengths), max(lengths))
    return Dataset.from_dict(rows), stats


def dialogue_index_dataset(dialogues: Sequence[Dialogue]) -> Dataset:
    """The 'eval dataset' handed to the trainer: just which dialogues the label-scoring evaluation labels."""
    return Dataset.from_dict({"dialogue_id": [d.id for d in dialogues], "length": [len(d) for d in dialogues]})
