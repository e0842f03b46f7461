"""Leak tests: test-split prompts with every context source on (biography + emotion history + demonstrations)
carry no gold test label, demonstrations come only from train, and biographies hold no dev/test text.

The gold labels of the test split are replaced by sentinel strings (`GOLD<n>`) that no real code path could
produce by chance: if any part of any prompt were built from a gold test label (the target's or a later
one's), its sentinel would appear. The prompts must also be identical to those built with the real labels.
Retrieval uses the model-free hashing encoder here; leakage does not depend on embedding quality.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import pytest

from erc_llm.data import SpeakerRegistry, load_split
from erc_llm.data.corpora import get_corpus
from erc_llm.labelling.loop import label_dialogues
from erc_llm.prompting import LeakageError, PromptConfig
from erc_llm.prompting.dataset import build_prompt_builder
from erc_llm.retrieval import BiographyStore, RetrievalConfig, RetrievalIndex, load_or_build_index
from erc_llm.retrieval.biographies import inputs_sha256

HASHING = RetrievalConfig(embedding_model="hashing-256")
ALL_SOURCES = PromptConfig(use_biography=True, use_history=True, use_demonstrations=True, history_window=4,
                           num_demonstrations=3, past_window=4)
HISTORY = re.compile(r"most recent emotions, oldest first: (.*)\.$", re.MULTILINE)
DEMO = re.compile(r'^- (.*?): "(.*)" -> (\S+)$', re.MULTILINE)
BIOGRAPHY = re.compile(r"^About (.+?): (.*)$", re.MULTILINE)


class ConstantScorer:
    """A stand-in model that always answers the same label."""

    def __init__(self, answer: str, labels: tuple[str, ...]) -> None:
        self.answer, self.labels = answer, labels

    def score(self, prompts):
        return [{label: float(label == self.answer) for label in self.labels} for _ in prompts]


def label_all(builder, dialogues, answer: str) -> dict[tuple[str, int], str]:
    """Label a split in rounds with a constant answer; returns each utterance's user prompt."""
    scorer = ConstantScorer(answer, builder.label_set.labels)
    results = label_dialogues(dialogues, builder, scorer, batch_size=256, progress=False)
    return {item.example.key: item.example.messages[-1]["content"] for item in results}


@pytest.fixture(scope="module", params=["meld", "emorynlp"])
def corpus(request, data_dir, tmp_path_factory):
    name = request.param
    splits = {s: load_split(name, s, data_dir).dialogues for s in ("train", "dev", "test")}
    builder = build_prompt_builder(ALL_SOURCES, name, data_dir, tmp_path_factory.mktemp(f"idx-{name}"),
                                   retrieval=HASHING)
    return {"name": name, "builder": builder, **splits}


def with_sentinel_labels(dialogues):
    """Copies of the dialogues whose gold labels are unique sentinel strings."""
    out, n = [], 0
    for d in dialogues:
        utterances = []
        for u in d.utterances:
            utterances.append(dataclasses.replace(u, label=f"GOLD{n}"))
            n += 1
        out.append(dataclasses.replace(d, utterances=utterances))
    return out


def test_test_prompts_hold_no_gold_label_and_only_train_demonstrations(corpus):
    builder, test, train = corpus["builder"], corpus["test"], corpus["train"]
    labels = get_corpus(corpus["name"]).label_set.labels
    answer = labels[-1]  # a constant prediction; any other label in a history would have leaked
    prompts = label_all(builder, test, answer)
    sentinel_prompts = label_all(builder, with_sentinel_labels(test), answer)
    assert len(prompts) == sum(len(d) for d in test)
    # No gold test label reaches any prompt: sentinels never appear, and the prompts do not change with them.
    assert not any("GOLD" in p for p in sentinel_prompts.values())
    assert sentinel_prompts == prompts

    train_lines = {(u.speaker, u.text, u.label) for d in train for u in d}
    train_ids = {d.id for d in train}
    n_demos = n_history = n_bios = 0
    for dialogue in test:
        for utt in dialogue:
            prompt = prompts[utt.key]
            # History: the model's own (constant) predictions only.
            (history,) = HISTORY.findall(prompt)
            if history != "none yet":
                n_history += 1
                assert set(history.split(", ")) == {answer}
            # Demonstrations: labelled training lines from training dialogues.
            demos = DEMO.findall(prompt)
            assert len(demos) == 3 and all(tuple(d) in train_lines for d in demos)
            objects = builder.demonstrations.demonstrations(utt, dialogue, 3)
            assert all(o.dialogue_id in train_ids for o in objects)
            assert [(o.speaker, o.text, o.label) for o in objects] == [tuple(d) for d in demos]
            n_demos += len(demos)
            n_bios += bool(BIOGRAPHY.search(prompt))
    assert n_history > len(prompts) // 2 and n_demos == 3 * len(prompts) and n_bios > 0.9 * len(prompts)


def test_biographies_come_from_train_only(corpus):
    builder, train = corpus["builder"], corpus["train"]
    store = builder.biographies.store
    assert store.header["source_splits"] == ["train"]
    assert store.header["inputs_sha256"] == inputs_sha256(train, builder.registry)
    bios = [r.profile_text for r in store.records.values()]
    # Every quoted line of a biography is a training line of that speaker's corpus.
    train_texts = {u.text for d in train for u in d}
    quotes = [q for bio in bios for q in re.findall(r'"(.*?)" \(\w+\)[;.]', bio)]
    assert quotes and all(q in train_texts for q in quotes)
    # No dev/test line appears verbatim in any biography (lines that also occur inside training text, such as
    # "I can't do it.", prove nothing and are left out).
    all_train = "\n".join(train_texts)
    held_out = {u.text for split in ("dev", "test") for d in corpus[split] for u in d
                if len(u.text.split()) >= 3 and u.text not in all_train}
    assert len(held_out) > 500
    offending = [(text, bio) for bio in bios for text in held_out if text in bio]
    assert not offending, offending[:3]
    # Every biography shown in a test prompt is a stored training biography (own or nearest known speaker).
    known = set(bios)
    test = corpus["test"]
    for dialogue in test[:40]:
        for utt in dialogue:
            bio = builder.biographies.biography(builder.registry.primary_id(utt), utt, dialogue)
            if bio is not None:
                assert bio in known or bio.split("whose profile is: ", 1)[1] in known


def test_building_from_evaluation_data_is_refused(corpus, tmp_path):
    registry = SpeakerRegistry.build([corpus["train"]])
    label_set = get_corpus(corpus["name"]).label_set
    for split in ("dev", "test"):
        with pytest.raises(LeakageError):
            BiographyStore.build(corpus[split], registry, label_set, corpus["name"])
        with pytest.raises(LeakageError):
            RetrievalIndex.build(corpus["train"] + corpus[split], registry, label_set, corpus["name"], HASHING)
        with pytest.raises(LeakageError):
            load_or_build_index(tmp_path, corpus["name"], corpus[split], registry, label_set, HASHING)
    assert not any(tmp_path.iterdir()) or all(p.name.startswith(".") for p in tmp_path.iterdir())


# ---- training prompts ----------------------------------------------------------------------------------------
SINGLE_EMOTION = re.compile(r"Emotions: (\w+) 100%\.")


def own_line_quoted(bio: str, utt) -> bool:
    """Whether a biography quotes the target's own line with its gold label, as a profile quotes lines."""
    return f'"{utt.text}" ({utt.label})' in bio


def single_emotion_shortcuts(source, registry, dialogues) -> tuple[int, int]:
    """(targets whose own profile has a single emotion, of those how many state the target's gold label)."""
    singles = agree = 0
    for dialogue in dialogues:
        for utt in dialogue:
            bio = source.biography(registry.primary_id(utt), utt, dialogue) or ""
            match = SINGLE_EMOTION.search(bio)
            if match and not bio.startswith("Not seen in training"):
                singles += 1
                agree += match.group(1) == utt.label
    return singles, agree


def test_training_prompts_do_not_quote_or_count_their_own_line(corpus):
    """Training prompts (real slice, every source on) never quote the target's own line and gold label in the
    biography, and its speaker's profile is the one built without the target's fold (so without its line)."""
    builder, train = corpus["builder"], corpus["train"]
    retriever = builder.biographies
    store = retriever.store
    assert store.header["training_folds"] == HASHING.training_folds == 10 and len(store.folds) == 10
    by_id = {d.id: d for d in train}
    lines: dict[str, Counter] = {}  # speaker -> labelled training lines per fold
    for d in train:
        for u in d:
            for speaker_id in builder.registry.speaker_ids(u) if u.label is not None else []:
                lines.setdefault(speaker_id, Counter())[store.dialogue_folds[d.id]] += 1
    piece = train[:120]
    examples = builder.training_examples(piece)
    assert len(examples) == sum(1 for d in piece for u in d if u.label is not None)
    n_bios = 0
    for example in examples:
        dialogue = by_id[example.dialogue_id]
        utt = dialogue[example.index]
        prompt = example.messages[-1]["content"]
        bio = BIOGRAPHY.search(prompt)
        if bio is None:
            continue
        n_bios += 1
        assert not own_line_quoted(bio.group(2), utt), (utt.key, bio.group(2))
        # Demonstrations of training prompts come from other dialogues too.
        assert all(d.dialogue_id != dialogue.id for d in builder.demonstrations.demonstrations(utt, dialogue, 3))
        # The speaker's biography is its fold record: no counted or quoted line from the target's dialogue.
        fold = store.fold_of(dialogue)
        assert fold is not None and store.dialogue_folds[dialogue.id] == fold
        record = store.folds[fold].get(builder.registry.primary_id(utt))
        if record is not None:
            assert bio.group(2) == record.profile_text
            assert all(q["dialogue_id"] != dialogue.id for q in record.profile["characteristic"])
            assert record.n_lines == lines[record.speaker_id].total() - lines[record.speaker_id][fold]
    assert n_bios > 0.9 * len(examples)


def test_single_emotion_profile_shortcut_is_gone(corpus):
    """Over the whole training split: with full-train biographies (training_folds=0, the old behaviour) every
    single-emotion profile a training target sees states its own gold label and some quote the target's own line;
    with fold biographies no target's own line is quoted and single-emotion profiles agree with the gold label
    no more often than chance would have it (well below always)."""
    builder, train = corpus["builder"], corpus["train"]
    label_set = get_corpus(corpus["name"]).label_set
    registry = builder.registry
    leaky = BiographyStore.build(train, registry, label_set, corpus["name"], training_folds=0)
    singles, agree = single_emotion_shortcuts(leaky, registry, train)
    quoted = sum(own_line_quoted(leaky.biography(registry.primary_id(u), u, d) or "", u) for d in train for u in d)
    assert singles > 30 and agree == singles and quoted > 200  # the defect the fold biographies remove

    source = builder.biographies
    quoted = sum(own_line_quoted(source.biography(registry.primary_id(u), u, d) or "", u) for d in train for u in d)
    singles, agree = single_emotion_shortcuts(source, registry, train)
    assert quoted == 0
    assert singles > 0 and agree < 0.75 * singles
    # Test prompts keep the full-train biographies.
    for dialogue in corpus["test"][:20]:
        for utt in dialogue:
            speaker_id = registry.primary_id(utt)
            if speaker_id in source.store:
                assert source.biography(speaker_id, utt, dialogue) == source.store.text(speaker_id)
