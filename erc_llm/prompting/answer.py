"""The answer format: the assistant replies with the canonical label word. Training targets, label scoring
and vLLM's `choice` options all use these same strings; this module checks how a tokenizer splits them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from erc_llm.prompting.templates import chat_ids

_PROBE = [{"role": "user", "content": "Which emotion?"}]


@dataclass(frozen=True)
class LabelTokens:
    """How a tokenizer writes each label as the assistant's whole reply."""

    labels: tuple[str, ...]
    ids: dict[str, tuple[int, ...]]  # label word tokens, as they follow the generation prompt
    end_ids: tuple[int, ...]  # tokens the chat template puts after the reply (e.g. <|im_end|>)

    @property
    def first_token_unique(self) -> bool:
        """Whether one forward pass (the first token's logits) tells the labels apart."""
        firsts = [self.ids[label][0] for label in self.labels]
        return len(set(firsts)) == len(firsts)

    @property
    def first_ids(self) -> list[int]:
        """First token of each label, in label order."""
        return [self.ids[label][0] for label in self.labels]


def label_tokens(tokenizer, labels: Sequence[str]) -> LabelTokens:
    """Tokenise each label as the assistant's reply in the model's chat template; refuse collisions."""
    prompt = chat_ids(tokenizer, _PROBE, add_generation_prompt=True)
    ids: dict[str, tuple[int, ...]] = {}
    end_ids: tuple[int, ...] | None = None
    for label in labels:
        full = chat_ids(tokenizer, [*_PROBE, {"role": "assistant", "content": label}], add_generation_prompt=False)
        if full[: len(prompt)] != prompt:
            raise ValueError("chat template renders the generation prompt differently from a finished turn")
        reply = full[len(prompt):]
        word = list(tokenizer(label, add_special_tokens=False)["input_ids"])
        if reply[: len(word)] != word:
            raise ValueError(f"label {label!r} tokenises differently inside the chat template: {reply} vs {word}")
        ids[label] = tuple(word)
        tail = tuple(reply[len(word):])
        end_ids = tail if end_ids is None else end_ids
    seen: dict[tuple[int, ...], str] = {}
    for label, seq in ids.items():
        if seq in seen:
            raise ValueError(f"labels {seen[seq]!r} and {label!r} tokenise to the same ids {seq}")
        seen[seq] = label
    return LabelTokens(labels=tuple(labels), ids=ids, end_ids=end_ids or ())
