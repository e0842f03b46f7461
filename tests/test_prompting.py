"""Prompt building on real MELD dialogues: template blocks, context windows, leak-free emotion history."""

from __future__ import annotations

import re

import pytest

from erc_llm.data import MELD_LABELS, SpeakerRegistry, load_split
from erc_llm.labelling.loop import label_dialogues
from erc_llm.prompting import EmotionHistory, LeakageError, PromptBuilder, PromptConfig, chronological_keys
from erc_llm.prompting.templates import find_template

HISTORY_LINE = re.compile(r"most recent emotions, oldest first: (.*)\.$", re.MULTILINE)


@pytest.fixture(scope="module")
def meld(data_dir):
    train = load_split("meld", "train", data_dir)
    return {"train": train, "test": load_split("meld", "test", data_dir),
            "registry": SpeakerRegistry.build([train.dialogues])}


def builder(meld, **overrides) -> PromptBuilder:
    return PromptBuilder(PromptConfig(**overrides), MELD_LABELS, meld["registry"])


def test_context_window_and_target(meld):
    dialogue = max(meld["test"].dialogues, key=len)
    messages = builder(meld, past_window=3).messages(dialogue, 5)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    lines = re.findall(r"^\[(\d+)\] ", user, re.MULTILINE)
    assert lines == ["3", "4", "5"]  # three earlier lines, 1-based
    assert f"Target line [6] {dialogue[5].speaker}: {dialogue[5].text}" in user
    assert dialogue[6].text not in user  # causal by default
    with_future = builder(meld, past_window=0, future_window=2).messages(dialogue, 5)[1]["content"]
    assert dialogue[6].text in with_future and dialogue[4].text not in with_future


def test_prompt_prefix_is_shared_within_a_dialogue(meld):
    dialogue = max(meld["test"].dialogues, key=len)
    b = builder(meld, past_window=50)
    first, second = (b.messages(dialogue, i)[1]["content"] for i in (3, 4))
    shared = len(first.split("Target line")[0]) - 2
    assert second[:shared] == first[:shared]  # transcript first, target-specific text last


def test_gold_history_for_training_is_chronological(meld):
    b = builder(meld, use_history=True, history_window=3)
    examples = b.training_examples(meld["train"].dialogues)
    assert len(examples) == 9989
    keys = chronological_keys(meld["train"].dialogues)
    # Recompute one speaker's history by hand from the gold labels.
    target = next(e for e in examples if e.speaker == "Monica" and len(HISTORY_LINE.findall(e.messages[1]["content"])))
    when = keys[target.key]
    earlier = sorted((keys[u.key], u.label) for d in meld["train"].dialogues for u in d
                     if u.speaker == "Monica" and keys[u.key] < when and u.index < target.index)
    expected = [label for _, label in earlier][-3:]
    shown = HISTORY_LINE.search(target.messages[1]["content"]).group(1)
    assert shown == (", ".join(expected) if expected else "none yet")


def test_gold_history_refused_for_test_split(meld):
    b = builder(meld, use_history=True)
    with pytest.raises(LeakageError):
        b.training_examples(meld["test"].dialogues)
    with pytest.raises(ValueError, match="gold labels never reach"):
        PromptConfig(use_history=True, eval_history_source="gold")


class ConstantScorer:
    """A stand-in model that always answers one label and records every prompt it sees."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.prompts: list[str] = []

    def score(self, prompts):
        self.prompts.extend(p[-1]["content"] for p in prompts)
        return [{label: float(label == self.answer) for label in MELD_LABELS.labels} for _ in prompts]


def test_test_prompts_carry_only_predictions_never_gold(meld):
    """Leak test: test-split history comes from the model's own predictions, never gold test labels."""
    dialogues = meld["test"].dialogues[:40]
    scorer = ConstantScorer("disgust")  # 'disgust' is rare in gold, so any other label in a history would leak
    results = label_dialogues(dialogues, builder(meld, use_history=True, history_window=4), scorer,
                              batch_size=16, progress=False)
    assert len(results) == sum(len(d) for d in dialogues)
    histories = [h for p in scorer.prompts for h in HISTORY_LINE.findall(p)]
    assert len(histories) == len(results)
    assert {tok for h in histories if h != "none yet" for tok in h.split(", ")} == {"disgust"}
    assert any(h != "none yet" for h in histories)


def test_resume_replays_history(meld):
    dialogues = meld["test"].dialogues[:10]
    b = builder(meld, use_history=True)
    full = label_dialogues(dialogues, b, ConstantScorer("joy"), progress=False)
    half = {item.example.key: item.pred for item in full[: len(full) // 2]}
    rest = label_dialogues(dialogues, b, ConstantScorer("joy"), done=half, progress=False)
    assert {i.example.key for i in rest} == {i.example.key for i in full} - set(half)
    by_key = {i.example.key: i.example.messages for i in full}
    assert all(by_key[i.example.key] == i.example.messages for i in rest)


def test_history_tracker_orders_out_of_order_adds():
    tracker = EmotionHistory("corpus")
    for when, label in [((1, 3), "c"), ((1, 1), "a"), ((1, 2), "b"), ((2, 0), "d")]:
        tracker.add("x", "d1", when, label)
    assert tracker.recent("x", "d1", (1, 3), 5) == ["a", "b"]
    assert tracker.recent("x", "d9", (9, 0), 2) == ["c", "d"]
    tracker.add("x", "d1", (1, 4), "late", position=7)
    assert tracker.recent("x", "d9", (9, 0), 2, below_position=3) == ["c", "d"]
    scoped = EmotionHistory("dialogue")
    scoped.add("x", "d1", (1,), "a")
    assert scoped.recent("x", "d2", (5,), 3) == []


def test_unknown_template_lists_available():
    with pytest.raises(FileNotFoundError, match="erc_instruct.j2"):
        find_template("nope.j2")
