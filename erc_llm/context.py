"""What a prompt's context sources give, below both `erc_llm.prompting` (which renders prompts) and
`erc_llm.retrieval` (which builds the sources): the source protocols, a retrieved demonstration, and the error
raised when a prompt for evaluated data would contain gold labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from erc_llm.data.schema import Dialogue, Utterance


class LeakageError(RuntimeError):
    """A prompt for evaluated data would contain gold labels."""


@dataclass(frozen=True)
class Demonstration:
    """A retrieved training line shown with its label (`dialogue_id`/`index` say where it came from)."""

    speaker: str
    text: str
    label: str
    dialogue_id: str | None = None
    index: int | None = None


class BiographySource(Protocol):
    """Gives the biography of the speaker of a target utterance (built from training data only)."""

    def biography(self, speaker_id: str, utterance: Utterance, dialogue: Dialogue) -> str | None: ...


class DemonstrationSource(Protocol):
    """Gives k labelled training lines similar to a target utterance (never from the target's dialogue)."""

    def demonstrations(self, utterance: Utterance, dialogue: Dialogue, k: int) -> list[Demonstration]: ...
