"""Looking at prompts: render one utterance's prompt with a chosen history source, and token length statistics
of whole splits under several prompt configs (logic behind `erc-llm prompts show|stats`)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from erc_llm.data.schema import Dialogue
from erc_llm.prompting.builder import EVAL_SPLITS, PromptBuilder
from erc_llm.prompting.config import PromptConfig
from erc_llm.prompting.history import EmotionHistory, chronological_keys, history_key

HISTORY_SOURCES = ("auto", "gold", "predictions", "knn", "none")

# Prompt configs compared by `erc-llm prompts stats`: which of the three context sources each turns on (the
# transcript window and every other setting come from the base config).
_OFF = {"use_history": False, "use_biography": False, "use_demonstrations": False}
STATS_PRESETS: dict[str, dict[str, Any]] = {
    "context": dict(_OFF),
    "+history": {**_OFF, "use_history": True},
    "+biography": {**_OFF, "use_biography": True},
    "+demonstrations": {**_OFF, "use_demonstrations": True},
    "all": {"use_history": True, "use_biography": True, "use_demonstrations": True},
    # the dialogue-packed layout: "mean" is the tokens a line adds to its dialogue's chat (what training and cached
    # labelling pay per utterance), "max" the longest whole-dialogue chat
    "packed": {**_OFF, "layout": "packed", "template": "erc_packed.j2"},
    "packed+history": {**_OFF, "use_history": True, "layout": "packed", "template": "erc_packed.j2"},
    "packed+biography": {**_OFF, "use_biography": True, "layout": "packed", "template": "erc_packed.j2"},
    # the same with the lines as one transcript turn (no chat turns per line)
    "packed_transcript": {**_OFF, "layout": "packed", "template": "erc_packed_transcript.j2"},
    "packed_transcript+history": {**_OFF, "use_history": True, "layout": "packed",
                                  "template": "erc_packed_transcript.j2"},
}


def with_config(builder: PromptBuilder, config: PromptConfig) -> PromptBuilder:
    """A builder for another config that shares this one's label set, registry and context sources."""
    return PromptBuilder(config, builder.label_set, builder.registry,
                         biographies=builder.biographies if config.use_biography else None,
                         demonstrations=builder.demonstrations if config.use_demonstrations else None)


def histories_from_labels(builder: PromptBuilder, dialogues: Sequence[Dialogue],
                          labels: Mapping[tuple[str, int], str]) -> dict[tuple[str, int], list[str]]:
    """Each utterance's emotion history when `labels` are the (predicted or gold) emotions of the split.

    Uses the same visibility rule as training and round-based labelling: chronologically earlier lines of the
    speaker at positions below the target's, so a full set of predictions gives exactly the labelling prompts.
    """
    cfg = builder.config
    keys = chronological_keys(dialogues)
    tracker = EmotionHistory(cfg.history_scope)
    for dialogue in dialogues:
        for utt in dialogue.utterances:
            if utt.key in labels:
                tracker.add(history_key(builder.registry, utt), dialogue.id, keys[utt.key], labels[utt.key], utt.index)
    return {utt.key: tracker.recent(history_key(builder.registry, utt), dialogue.id, keys[utt.key],
                                    cfg.history_window, below_position=utt.index)
            for dialogue in dialogues for utt in dialogue.utterances}


def read_predictions(path: str | Path) -> dict[tuple[str, int], str]:
    """{(dialogue_id, index): pred} from a JSONL file of rows with dialogue_id, utterance_index (or index), pred."""
    found = {}
    with Path(path).open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            try:
                index = row["utterance_index"] if "utterance_index" in row else row["index"]
                found[(row["dialogue_id"], int(index))] = row["pred"]
            except KeyError as exc:
                raise ValueError(f"{path}, line {lineno}: prediction row lacks {exc}") from None
    return found


def split_histories(
    builder: PromptBuilder,
    dialogues: Sequence[Dialogue],
    source: str = "auto",
    predictions: Mapping[tuple[str, int], str] | None = None,
) -> tuple[dict[tuple[str, int], list[str]] | None, str]:
    """Histories for a split and a note saying where they come from (None when history is off).

    `auto`: gold labels on a training split; on evaluation splits the given predictions, else a k-NN vote over
    training lines (a model-free stand-in for a model's own predictions) when demonstrations are available,
    else no history. Gold labels of evaluation splits are never used.
    """
    if not builder.config.use_history:
        return None, "history off"
    if source not in HISTORY_SOURCES:
        raise ValueError(f"history source must be one of {HISTORY_SOURCES}, got {source!r}")
    is_eval = bool({d.split for d in dialogues} & set(EVAL_SPLITS))
    if source == "auto":
        if not is_eval:
            source = "gold"
        elif predictions is not None:
            source = "predictions"
        else:
            source = "knn" if hasattr(builder.demonstrations, "knn_labels") else "none"
    if source == "gold":
        builder.gold_history(dialogues)  # raises LeakageError on evaluation splits
        labels = {u.key: u.label for d in dialogues for u in d if u.label is not None}
        return histories_from_labels(builder, dialogues, labels), "gold training labels"
    if source == "predictions":
        if predictions is None:
            raise ValueError("history source 'predictions' needs a predictions file")
        return histories_from_labels(builder, dialogues, predictions), "predictions file"
    if source == "knn":
        knn = getattr(builder.demonstrations, "knn_labels", None)
        if knn is None:
            raise ValueError("history source 'knn' needs demonstrations (a retrieval index) to be enabled")
        return histories_from_labels(builder, dialogues, knn(dialogues)), "k-NN votes of training lines"
    return {u.key: [] for d in dialogues for u in d}, "none"


def find_dialogue(dialogues: Sequence[Dialogue], dialogue_id: str) -> Dialogue:
    """The dialogue with this id (a bare number is taken as `<corpus>/<split>/<number>`)."""
    for dialogue in dialogues:
        if dialogue.id == dialogue_id or dialogue.id.rsplit("/", 1)[-1] == dialogue_id:
            return dialogue
    sample = ", ".join(d.id for d in dialogues[:3])
    raise ValueError(f"no dialogue {dialogue_id!r} in this split (ids look like: {sample}, ...)")


def render_chat(messages: list[dict[str, str]], tokenizer: Any, add_generation_prompt: bool = True) -> str:
    """The prompt as the model sees it: the tokenizer's chat template (with the generation prompt; a prompt ending
    in an open transcript turn ends inside it)."""
    from erc_llm.prompting.templates import apply_chat_template, chat_prompt_text, is_continued

    if is_continued(messages):
        return chat_prompt_text(tokenizer, messages)
    return apply_chat_template(tokenizer, messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def render_messages_plain(messages: list[dict[str, str]]) -> str:
    """Raw messages, one block per role."""
    return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)


def prompt_token_lengths(builder: PromptBuilder, dialogues: Sequence[Dialogue], tokenizer: Any,
                         histories: Mapping[tuple[str, int], list[str]] | None) -> list[int]:
    """Token count of every utterance's prompt (chat template with generation prompt applied)."""
    lengths = []
    for dialogue in dialogues:
        for utt in dialogue.utterances:
            history = histories.get(utt.key, []) if histories is not None else None
            text = render_chat(builder.messages(dialogue, utt.index, history), tokenizer)
            lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return lengths


def packed_chat(builder: PromptBuilder, dialogues: Sequence[Dialogue], dialogue: Dialogue, upto: int,
                labels: Mapping[tuple[str, int], str] | None) -> list[dict[str, str]]:
    """The packed-layout chat that labels line `upto`: inline labels and header history from `labels` (gold on
    train, predictions on dev/test; a line without one shows `<label>`)."""
    from erc_llm.prompting.packed import dialogue_start_keys, packed_messages, scene_history

    labels = labels or {}
    tracker = None
    if builder.config.use_history:
        keys = chronological_keys(dialogues)
        tracker = EmotionHistory("corpus")
        for d in dialogues:
            for utt in d.utterances:
                if utt.key in labels:
                    tracker.add(history_key(builder.registry, utt), d.id, keys[utt.key], labels[utt.key], utt.index)
    history = scene_history(builder, dialogue, tracker, dialogue_start_keys(dialogues)[dialogue.id])
    inline = [labels.get(u.key, "<label>") for u in dialogue.utterances[:upto]]
    return packed_messages(builder, dialogue, 0, upto + 1, inline, history)


def packed_token_lengths(builder: PromptBuilder, dialogues: Sequence[Dialogue], tokenizer: Any) -> tuple[list[int], list[int]]:
    """(tokens each line adds to its dialogue's packed chat, whole-dialogue chat lengths); history shows no labels."""
    from erc_llm.prompting.packed import packed_messages, scene_history
    from erc_llm.prompting.templates import chat_ids

    per_line, per_dialogue = [], []
    for dialogue in dialogues:
        if not dialogue.utterances:
            continue
        history = scene_history(builder, dialogue, None, ())
        labels = [builder.label_set.labels[0]] * len(dialogue)
        n = len(chat_ids(tokenizer, packed_messages(builder, dialogue, 0, len(dialogue), labels, history),
                         add_generation_prompt=False))
        per_dialogue.append(n)
        per_line.extend([n / len(dialogue)] * len(dialogue))
    return per_line, per_dialogue


def length_summary(lengths: Sequence[int]) -> dict[str, float]:
    """n, mean, p50, p95 and max of token lengths."""
    if not lengths:
        return {"n": 0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0}
    values = np.asarray(lengths)
    return {"n": int(values.size), "mean": round(float(values.mean()), 1), "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95)), "max": int(values.max())}


def preset_configs(base: PromptConfig, names: Sequence[str]) -> dict[str, PromptConfig]:
    """The named `STATS_PRESETS` applied to a base config."""
    unknown = [n for n in names if n not in STATS_PRESETS]
    if unknown:
        raise ValueError(f"unknown preset(s) {unknown}; known: {list(STATS_PRESETS)}")
    return {n: dataclasses.replace(base, **STATS_PRESETS[n]) for n in names}
