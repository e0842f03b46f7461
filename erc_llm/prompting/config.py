"""Prompt configuration: which context sources go into the instruction (this is how ablations run)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PromptConfig:
    """What each utterance's instruction contains.

    The three context sources of the method are switched independently: the dialogue transcript
    (`past_window`/`future_window`), the speaker biography (`use_biography`), the speaker's recent emotion
    history (`use_history`), plus retrieved demonstrations (`use_demonstrations`). Training prompts take the
    history from gold labels of the training split; evaluation and labelling prompts take it from the model's
    own earlier predictions (`eval_history_source="predicted"`) or leave it out (`"none"`), never from gold.
    """

    template: str = field(default="erc_instruct.j2", metadata={"help": "Jinja2 template file name in prompts/."})
    layout: str = field(
        default="per_utterance",
        metadata={"help": "'per_utterance': one prompt per target line (context window, demonstrations); 'packed': "
                          "one chat per dialogue, so the prompt of line i is a prefix of line i+1's: each line a user "
                          "turn answered by its label (template erc_packed.j2), or the lines as one assistant "
                          "transcript, each followed by its label (erc_packed_transcript.j2, ~40 per cent fewer "
                          "tokens per line); erc_llm.prompting.packed."},
    )
    past_window: int = field(default=8, metadata={"help": "Earlier utterances of the dialogue shown as context."})
    future_window: int = field(
        default=0, metadata={"help": "Later utterances shown as context (0 = causal/online setting)."}
    )
    max_line_chars: int = field(default=300, metadata={"help": "Context lines longer than this are cut."})
    use_biography: bool = field(default=False, metadata={"help": "Add the speaker's biography (from train)."})
    biography_kind: str = field(
        default="profile", metadata={"help": "'profile' (deterministic statistics) or 'llm' (LLM-written)."}
    )
    use_history: bool = field(default=False, metadata={"help": "Add the speaker's most recent emotions."})
    history_window: int = field(default=5, metadata={"help": "How many recent emotions of the speaker."})
    history_scope: str = field(
        default="corpus", metadata={"help": "'corpus' (across dialogues, chronological) or 'dialogue'."}
    )
    eval_history_source: str = field(
        default="predicted", metadata={"help": "History at dev/test/labelling time: 'predicted' or 'none'."}
    )
    use_demonstrations: bool = field(
        default=False, metadata={"help": "Add k nearest training utterances with their labels."}
    )
    num_demonstrations: int = field(default=3, metadata={"help": "k for retrieved demonstrations."})
    demonstration_query: str = field(
        default="line",
        metadata={"help": "What retrieves demonstrations: 'line' (the target line) or 'with_previous' (the "
                          "dialogue's previous line and the target line)."},
    )
    unseen_speaker_biography: str = field(
        default="nearest",
        metadata={"help": "Biography of a speaker unseen in training (`unknown`, generic roles): 'nearest' (the "
                          "profile of the known speaker whose training lines are closest to what this speaker said "
                          "in the dialogue up to and including the target line) or 'none'."},
    )

    def __post_init__(self) -> None:
        if self.past_window < 0 or self.future_window < 0:
            raise ValueError("past_window and future_window must be >= 0")
        if self.biography_kind not in ("profile", "llm"):
            raise ValueError(f"biography_kind must be 'profile' or 'llm', got {self.biography_kind!r}")
        if self.history_scope not in ("corpus", "dialogue"):
            raise ValueError(f"history_scope must be 'corpus' or 'dialogue', got {self.history_scope!r}")
        if self.eval_history_source not in ("predicted", "none"):
            raise ValueError(
                f"eval_history_source must be 'predicted' or 'none' (gold labels never reach evaluation "
                f"prompts), got {self.eval_history_source!r}"
            )
        if self.demonstration_query not in ("line", "with_previous"):
            raise ValueError(f"demonstration_query must be 'line' or 'with_previous', got {self.demonstration_query!r}")
        if self.unseen_speaker_biography not in ("nearest", "none"):
            raise ValueError(
                f"unseen_speaker_biography must be 'nearest' or 'none', got {self.unseen_speaker_biography!r}"
            )
        if self.layout not in ("per_utterance", "packed"):
            raise ValueError(f"layout must be 'per_utterance' or 'packed', got {self.layout!r}")
        if self.layout == "packed" and (self.use_demonstrations or self.future_window):
            raise ValueError("layout 'packed' shows every earlier line in order: demonstrations (retrieved per "
                             "target) and future_window only fit layout 'per_utterance'")
        if self.history_window < 1 or self.num_demonstrations < 1:
            raise ValueError("history_window and num_demonstrations must be >= 1")

    @property
    def needs_rounds(self) -> bool:
        """Whether labelling must go in dialogue-order rounds (history from own predictions)."""
        return self.use_history and self.eval_history_source == "predicted"
