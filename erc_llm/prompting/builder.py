"""Turn one utterance of a dialogue into chat messages, from a template and the enabled context sources."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from erc_llm.context import BiographySource, Demonstration, DemonstrationSource, LeakageError
from erc_llm.data.labels import LabelSet
from erc_llm.data.schema import Dialogue, Utterance
from erc_llm.data.speakers import SpeakerRegistry
from erc_llm.prompting.config import PromptConfig
from erc_llm.prompting.history import EmotionHistory, chronological_keys, history_key
from erc_llm.prompting.templates import load_template, render_messages

EVAL_SPLITS = ("dev", "test", "custom", "unlabeled")
__all__ = ["EVAL_SPLITS", "BiographySource", "Demonstration", "DemonstrationSource", "LeakageError", "PromptBuilder",
           "PromptExample"]


@dataclass
class PromptExample:
    """One rendered prompt: chat messages for an utterance, and its gold label when known."""

    dialogue_id: str
    index: int
    utterance_id: str | None
    speaker: str
    text: str
    messages: list[dict[str, str]]
    label: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return (self.dialogue_id, self.index)


class PromptBuilder:
    """Renders prompts; holds the template, label set, speaker registry and optional context sources."""

    def __init__(
        self,
        config: PromptConfig,
        label_set: LabelSet,
        registry: SpeakerRegistry | None = None,
        biographies: BiographySource | None = None,
        demonstrations: DemonstrationSource | None = None,
    ) -> None:
        self.config = config
        self.label_set = label_set
        self.registry = registry or SpeakerRegistry(aliases={})
        self.biographies = biographies
        self.demonstrations = demonstrations
        self.template = load_template(config.template)
        if config.use_biography and biographies is None:
            raise ValueError("use_biography is on but no biography source was given")
        if config.use_demonstrations and demonstrations is None:
            raise ValueError("use_demonstrations is on but no demonstration source was given")

    def _line(self, utt: Utterance) -> dict:
        """A transcript line for the template (1-based position)."""
        text = utt.text if len(utt.text) <= self.config.max_line_chars else utt.text[: self.config.max_line_chars] + "..."
        return {"position": utt.index + 1, "speaker": utt.speaker, "text": text}

    def messages(self, dialogue: Dialogue, index: int, history: Sequence[str] | None = None) -> list[dict[str, str]]:
        """Chat messages for utterance `index` of `dialogue`; `history` is None when history is off."""
        cfg = self.config
        target = dialogue.utterances[index]
        lo = max(0, index - cfg.past_window)
        hi = min(len(dialogue), index + 1 + cfg.future_window)
        context = [self._line(u) for u in dialogue.utterances[lo:index]]
        if cfg.future_window:
            context += [self._line(u) for u in dialogue.utterances[index + 1:hi]]
        speaker_id = self.registry.primary_id(target)
        variables = {
            "labels": list(self.label_set.labels),
            "context": context,
            "target": self._line(target),
            "speaker_id": speaker_id,
            "biography": self.biographies.biography(speaker_id, target, dialogue) if cfg.use_biography else None,
            "history": list(history) if cfg.use_history and history is not None else ([] if cfg.use_history else None),
            "demonstrations": (
                self.demonstrations.demonstrations(target, dialogue, cfg.num_demonstrations)
                if cfg.use_demonstrations else []
            ),
        }
        return render_messages(self.template, variables)

    def example(self, dialogue: Dialogue, index: int, history: Sequence[str] | None = None,
                with_label: bool = True) -> PromptExample:
        """A `PromptExample` for one utterance."""
        utt = dialogue.utterances[index]
        return PromptExample(
            dialogue_id=dialogue.id, index=index, utterance_id=utt.utterance_id, speaker=utt.speaker,
            text=utt.text, messages=self.messages(dialogue, index, history),
            label=utt.label if with_label else None,
        )

    # ---- whole splits ---------------------------------------------------------------------------------
    def gold_history(self, dialogues: Sequence[Dialogue], allow_eval_split: bool = False) -> EmotionHistory:
        """History filled with gold labels: for building *training* prompts only."""
        splits = {d.split for d in dialogues}
        if not allow_eval_split and splits & set(EVAL_SPLITS):
            raise LeakageError(
                f"gold emotion history requested for evaluation split(s) {sorted(splits & set(EVAL_SPLITS))}; "
                "evaluation prompts take history from the model's own predictions"
            )
        tracker = EmotionHistory(self.config.history_scope)
        keys = chronological_keys(dialogues)
        for dialogue in dialogues:
            for utt in dialogue.utterances:
                if utt.label is not None:
                    tracker.add(history_key(self.registry, utt), dialogue.id, keys[utt.key], utt.label, utt.index)
        return tracker

    def training_examples(self, dialogues: Sequence[Dialogue], allow_eval_split: bool = False) -> list[PromptExample]:
        """(messages, label) for every labelled utterance, history from gold labels of earlier utterances."""
        tracker = self.gold_history(dialogues, allow_eval_split) if self.config.use_history else None
        keys = chronological_keys(dialogues)
        examples = []
        for dialogue in dialogues:
            for utt in dialogue.utterances:
                if utt.label is None:
                    continue
                history = None
                if tracker is not None:
                    history = tracker.recent(history_key(self.registry, utt), dialogue.id, keys[utt.key],
                                             self.config.history_window, below_position=utt.index)
                examples.append(self.example(dialogue, utt.index, history))
        return examples

    def unconditioned_examples(self, dialogues: Iterable[Dialogue]) -> list[PromptExample]:
        """Prompts without any label information (history off or 'none'), gold kept only for scoring."""
        if self.config.needs_rounds:
            raise ValueError("this prompt config needs predicted history: label in rounds (erc_llm.labelling)")
        return [self.example(d, u.index, [] if self.config.use_history else None) for d in dialogues for u in d]
