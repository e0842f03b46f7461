"""The data layer on the full real corpora: exact sizes, label counts, JSON/CSV agreement, round trips."""

from __future__ import annotations

from collections import Counter

import pytest

from erc_llm.data import CORPORA, load_split
from erc_llm.data.hf import dialogues_from_rows, to_dataset_dict
from erc_llm.data.loaders import load_jsonl, write_jsonl

EXPECTED = {
    ("meld", "train"): (9989, 1038, {"neutral": 4710, "surprise": 1205, "fear": 268, "sadness": 683, "joy": 1743,
                                     "disgust": 271, "anger": 1109}),
    ("meld", "dev"): (1109, 114, {"sadness": 111, "surprise": 150, "neutral": 470, "joy": 163, "anger": 153,
                                  "disgust": 22, "fear": 40}),
    ("meld", "test"): (2610, 280, {"surprise": 281, "anger": 345, "neutral": 1256, "joy": 402, "sadness": 208,
                                   "fear": 50, "disgust": 68}),
    ("emorynlp", "train"): (7551, 659, {"joyful": 1677, "neutral": 2485, "powerful": 551, "mad": 785, "sad": 474,
                                        "scared": 941, "peaceful": 638}),
    ("emorynlp", "dev"): (1344, 99, {"neutral": 393, "scared": 178, "joyful": 289, "peaceful": 132, "mad": 143,
                                     "sad": 75, "powerful": 134}),
    ("emorynlp", "test"): (1328, 85, {"mad": 113, "neutral": 349, "joyful": 282, "scared": 182, "sad": 98,
                                      "powerful": 145, "peaceful": 159}),
    ("emorynlp-csv", "dev"): (954, 89, {"neutral": 322, "scared": 127, "joyful": 205, "peaceful": 82, "mad": 97,
                                        "sad": 51, "powerful": 70}),
    ("emorynlp-csv", "test"): (984, 79, {"mad": 86, "neutral": 288, "joyful": 217, "scared": 116, "sad": 70,
                                         "peaceful": 111, "powerful": 96}),
}


@pytest.mark.parametrize(("corpus", "split"), sorted(EXPECTED))
def test_full_split_sizes_and_labels(data_dir, corpus, split):
    utterances, dialogues, labels = EXPECTED[(corpus, split)]
    loaded = load_split(corpus, split, data_dir)
    assert loaded.n_utterances == utterances
    assert len(loaded.dialogues) == dialogues
    assert dict(Counter(u.label for u in loaded.utterances())) == labels
    assert loaded.skipped == []
    spec = CORPORA[corpus].splits[split]
    assert (spec.utterances, spec.dialogues) == (utterances, dialogues)


def test_positions_are_contiguous_and_ids_unique(data_dir):
    for corpus, split in EXPECTED:
        loaded = load_split(corpus, split, data_dir)
        keys = set()
        for dialogue in loaded.dialogues:
            assert [u.index for u in dialogue] == list(range(len(dialogue)))
            assert all(u.dialogue_id == dialogue.id for u in dialogue)
            keys.update(u.utterance_id for u in dialogue)
        assert len(keys) == loaded.n_utterances


@pytest.mark.parametrize("split", ["dev", "test"])
def test_emorynlp_json_and_csv_agree(data_dir, split):
    official = {u.utterance_id: u for u in load_split("emorynlp", split, data_dir).utterances()}
    reduced = list(load_split("emorynlp-csv", split, data_dir).utterances())
    assert reduced, "CSV split is empty"
    for utt in reduced:
        twin = official[utt.utterance_id]
        assert twin.dialogue_id == utt.dialogue_id
        assert twin.label == utt.label
        assert twin.speakers == utt.speakers
        assert twin.text == utt.text


def test_meld_fields(data_dir):
    dialogue = load_split("meld", "train", data_dir).dialogues[0]
    first = dialogue[0]
    assert first.dialogue_id == "meld/train/0" and first.utterance_id == "dia0_utt0"
    assert first.speakers == ("Chandler",)
    assert first.text.startswith("also I was the point person on my company's transition")  # ’ -> '
    assert first.start == pytest.approx(16 * 60 + 16.059) and first.end == pytest.approx(16 * 60 + 21.731)
    assert first.meta["sentiment"] == "neutral"


def test_emorynlp_multi_speaker(data_dir):
    multi = [u for u in load_split("emorynlp", "train", data_dir).utterances() if len(u.speakers) > 1]
    assert multi and all(isinstance(s, str) and s for u in multi for s in u.speakers)
    assert any(u.speakers == ("Monica Geller", "Rachel Green") for u in multi)


def test_datasetdict_round_trip(data_dir):
    splits = {s: load_split("meld", s, data_dir) for s in ("dev", "test")}
    dsd = to_dataset_dict(splits)
    assert dsd["dev"].num_rows == 1109 and dsd["test"].num_rows == 2610
    row = dsd["dev"][0]
    assert set(row) >= {"dialogue_id", "index", "speakers", "text", "label"}
    back = dialogues_from_rows(dsd["dev"].shuffle(seed=0))
    by_id = {d.id: d for d in back}
    for dialogue in splits["dev"].dialogues:
        assert by_id[dialogue.id].utterances == dialogue.utterances


def test_jsonl_round_trip(data_dir, tmp_path):
    dialogues = load_split("emorynlp", "dev", data_dir).dialogues[:5]
    path = tmp_path / "mine.jsonl"
    write_jsonl(dialogues, path)
    again = load_jsonl(path, label_set=CORPORA["emorynlp"].label_set)
    assert [d.id for d in again.dialogues] == [d.id for d in dialogues]
    assert [u for d in again.dialogues for u in d] == [u for d in dialogues for u in d]
