"""The dialogue-packed prompt layout: one chat per dialogue, so the prompt for line i is a prefix of line i+1's.

    system  | the instruction
    user    | header: label list, the dialogue's speakers with their biographies and (when history is on) their
            | emotions from chronologically earlier dialogues; then line 1
    assistant | label of line 1
    user    | line 2
    assistant | label of line 2 ...

A template with a `transcript_line` block instead of `line` (erc_packed_transcript.j2) writes the lines into one
assistant turn instead: the scene as a transcript, each line followed on the next line by its label. The prompt
for line i is that open turn up to line i and a newline (`erc_llm.prompting.templates.open_turn`); a line costs its
words plus a few tokens, not a pair of chat turns.

    system    | the instruction
    user      | header
    assistant | line 1 \n label 1 \n line 2 \n label 2 \n ...

Training renders a dialogue with its gold labels inline (chunks with the header repeated when it exceeds
`max_length`) and scores every label position in one forward pass. Labelling asks for line i's label with the
chat up to line i, whose earlier labels are the model's own predictions (never gold: `packed_messages` takes the
labels to show as an argument, and the labelling loop passes only predictions).

The header's history holds each speaker's emotions in *every* chronologically earlier dialogue (all positions):
what a labeller that goes through the corpus in its own order (season, episode, scene time) has finished. The
biography of a speaker who first speaks at line j is looked up with that line (the 'nearest' fallback for unseen
speakers reads their text, never a label).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from erc_llm.data.schema import Dialogue, Utterance
from erc_llm.prompting.builder import PromptBuilder
from erc_llm.prompting.history import EmotionHistory, chronological_keys, history_key
from erc_llm.prompting.templates import open_turn

PACKED_BLOCKS = ("system", "user")
LINE_BLOCKS = ("line", "transcript_line")  # one chat turn per line, or all lines in one transcript turn


@dataclass(frozen=True)
class SceneSpeaker:
    """A speaker of a dialogue as the header shows them."""

    name: str
    key: str  # history key (registry id, or per-name key for unseen speakers)
    first: Utterance  # their first line in the dialogue


def check_packed_template(builder: PromptBuilder) -> None:
    """Refuse a template without the packed layout's blocks."""
    blocks = builder.template.blocks
    missing = [b for b in PACKED_BLOCKS if b not in blocks]
    lines = [b for b in LINE_BLOCKS if b in blocks]
    if missing or len(lines) != 1:
        why = f"lacks {missing}" if missing else (f"has both {LINE_BLOCKS}" if lines else f"has none of {LINE_BLOCKS}")
        raise ValueError(
            f"layout 'packed' needs a template with blocks {list(PACKED_BLOCKS)} and one of {list(LINE_BLOCKS)}; "
            f"{builder.config.template!r} {why} (use template: erc_packed.j2 or erc_packed_transcript.j2)"
        )


def transcript_turns(builder: PromptBuilder) -> bool:
    """Whether the template writes the lines as one assistant transcript (block `transcript_line`)."""
    return "transcript_line" in builder.template.blocks


def scene_speakers(builder: PromptBuilder, dialogue: Dialogue) -> list[SceneSpeaker]:
    """The dialogue's speakers in order of first appearance (a joint line counts for its first speaker)."""
    seen: dict[str, SceneSpeaker] = {}
    for utt in dialogue.utterances:
        key = history_key(builder.registry, utt)
        if key not in seen:
            seen[key] = SceneSpeaker(name=utt.speaker, key=key, first=utt)
    return list(seen.values())


def scene_history(builder: PromptBuilder, dialogue: Dialogue, tracker: EmotionHistory | None,
                  before: tuple) -> dict[str, list[str]] | None:
    """Each speaker's last `history_window` emotions before the dialogue (None when history is off)."""
    if not builder.config.use_history:
        return None
    if tracker is None or builder.config.history_scope != "corpus":
        return {s.key: [] for s in scene_speakers(builder, dialogue)}
    return {s.key: tracker.recent(s.key, dialogue.id, before, builder.config.history_window)
            for s in scene_speakers(builder, dialogue)}


def _render(builder: PromptBuilder, block: str, variables: dict) -> str:
    template = builder.template
    return "".join(template.blocks[block](template.new_context(variables))).strip()


def header_messages(builder: PromptBuilder, dialogue: Dialogue, history: Mapping[str, list[str]] | None,
                    ) -> tuple[str, str]:
    """(system text, header text) of a dialogue."""
    cfg = builder.config
    speakers = []
    for s in scene_speakers(builder, dialogue):
        bio = None
        if cfg.use_biography and builder.biographies is not None:
            bio = builder.biographies.biography(builder.registry.primary_id(s.first), s.first, dialogue)
        speakers.append({"name": s.name, "biography": bio,
                         "history": list(history.get(s.key, [])) if history is not None else None})
    variables = {"labels": list(builder.label_set.labels), "speakers": speakers, "history_on": history is not None}
    return _render(builder, "system", variables), _render(builder, "user", variables)


def line_text(builder: PromptBuilder, utt: Utterance) -> str:
    """One transcript line: its user turn, or its line of the transcript turn."""
    block = "transcript_line" if transcript_turns(builder) else "line"
    return _render(builder, block, {"line": builder._line(utt)})


def packed_messages(builder: PromptBuilder, dialogue: Dialogue, start: int, end: int, labels: Sequence[str],
                    history: Mapping[str, list[str]] | None, header: tuple[str, str] | None = None,
                    ) -> list[dict[str, str]]:
    """The chat of lines [start, end): each line a user turn, each of `labels` (one per line, in order) the
    assistant's answer. With len(labels) == end - start - 1 the chat ends on the last line's user turn (the
    labelling prompt of line end-1); with len(labels) == end - start it is a finished training chunk. With
    transcript turns the lines and labels are one open assistant turn after the header."""
    if not (end - start - 1 <= len(labels) <= end - start):
        raise ValueError(f"{len(labels)} labels for lines [{start}, {end})")
    system, head = header or header_messages(builder, dialogue, history)
    messages = [{"role": "system", "content": system}] if system else []
    if transcript_turns(builder):
        lines = dialogue.utterances[start:end]
        body = "".join(f"{line_text(builder, utt)}\n" + (f"{labels[k]}\n" if k < len(labels) else "")
                       for k, utt in enumerate(lines))
        return [*messages, {"role": "user", "content": head}, open_turn(body)]
    for offset, utt in enumerate(dialogue.utterances[start:end]):
        text = line_text(builder, utt)
        messages.append({"role": "user", "content": f"{head}\n\n{text}" if offset == 0 else text})
        if offset < len(labels):
            messages.append({"role": "assistant", "content": labels[offset]})
    return messages


def gold_history_tracker(builder: PromptBuilder, dialogues: Sequence[Dialogue]) -> EmotionHistory:
    """Corpus history from gold labels: for *training* prompts only (refuses evaluation splits)."""
    return builder.gold_history(dialogues)


def dialogue_start_keys(dialogues: Sequence[Dialogue]) -> dict[str, tuple]:
    """Chronological key of each dialogue's first line (history 'before this scene')."""
    keys = chronological_keys(dialogues)
    return {d.id: keys[d.utterances[0].key] for d in dialogues if d.utterances}


def chronological_order(dialogues: Sequence[Dialogue]) -> list[Dialogue]:
    """Dialogues sorted by their corpus time (season, episode, scene time, file order)."""
    starts = dialogue_start_keys(dialogues)
    return sorted((d for d in dialogues if d.utterances), key=lambda d: starts[d.id])
