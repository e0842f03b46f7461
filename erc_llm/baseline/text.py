"""Text inputs: an utterance with its dialogue context as one token window, the target kept whole.

Each line is rendered with a template (`"{speaker}: {text}"`, the target `"* {speaker}: {text}"`), tokenised
once per dialogue, and windows are assembled as `[CLS] line [SEP] line [SEP] ...`. The target line goes in
first (cut only if it alone exceeds the budget); context lines are added nearest first, previous before
following, and whole lines only, until `max_length` is reached. `target_mask` marks the target's tokens so
the encoder output can be pooled over the target while the target tokens attend to the context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from erc_llm.data.schema import Dialogue, Utterance


@dataclass(frozen=True)
class TextWindow:
    """Token ids of one utterance with its context, and a 0/1 mask over the target utterance's tokens."""

    input_ids: tuple[int, ...]
    target_mask: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.input_ids)


def render_line(utterance: Utterance, template: str) -> str:
    """One dialogue line as text, e.g. `Monica: Hi!`."""
    return template.format(speaker=utterance.speaker, text=utterance.text)


class ContextWindowBuilder:
    """Builds `TextWindow`s for every utterance of a dialogue with a Hugging Face tokenizer."""

    def __init__(
        self,
        tokenizer,
        context_before: int,
        context_after: int,
        context_line_template: str,
        target_line_template: str,
        max_length: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.context_before = context_before
        self.context_after = context_after
        self.context_line_template = context_line_template
        self.target_line_template = target_line_template
        self.max_length = max_length
        self.start_id = _first_id(tokenizer, "cls_token_id", "bos_token_id")
        self.sep_id = _first_id(tokenizer, "sep_token_id", "eos_token_id")

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens."""
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def dialogue_windows(self, dialogue: Dialogue | Sequence[Utterance]) -> list[TextWindow]:
        """One window per utterance of a dialogue, in order."""
        utterances = list(dialogue)
        context_lines = self._tokenize([render_line(u, self.context_line_template) for u in utterances])
        target_lines = self._tokenize([render_line(u, self.target_line_template) for u in utterances])
        return [self._window(position, context_lines, target_lines[position]) for position in range(len(utterances))]

    def _window(self, position: int, context_lines: list[list[int]], target: list[int]) -> TextWindow:
        """Assemble the window of the utterance at `position`."""
        per_line_cost = 1 if self.sep_id is not None else 0
        budget = self.max_length - (1 if self.start_id is not None else 0)
        target = target[: max(1, budget - per_line_cost)]
        budget -= len(target) + per_line_cost
        before: list[list[int]] = []
        after: list[list[int]] = []
        open_before, open_after = True, True
        for distance in range(1, max(self.context_before, self.context_after) + 1):
            for side in ("before", "after"):
                limit = self.context_before if side == "before" else self.context_after
                index = position - distance if side == "before" else position + distance
                is_open = open_before if side == "before" else open_after
                if not is_open or distance > limit or not 0 <= index < len(context_lines):
                    continue
                cost = len(context_lines[index]) + per_line_cost
                if cost > budget:
                    if side == "before":
                        open_before = False
                    else:
                        open_after = False
                    continue
                budget -= cost
                (before if side == "before" else after).append(context_lines[index])
        ids: list[int] = [] if self.start_id is None else [self.start_id]
        mask: list[int] = [0] * len(ids)
        for line, is_target in [*((line, False) for line in reversed(before)), (target, True),
                                *((line, False) for line in after)]:
            ids.extend(line)
            mask.extend([1 if is_target else 0] * len(line))
            if self.sep_id is not None:
                ids.append(self.sep_id)
                mask.append(0)
        return TextWindow(tuple(ids), tuple(mask))


def _first_id(tokenizer, *attributes: str) -> int | None:
    """The first special-token id the tokenizer defines among `attributes`."""
    for attribute in attributes:
        value = getattr(tokenizer, attribute, None)
        if value is not None:
            return int(value)
    return None
