"""Dataset-wide speaker identity across dialogues, splits and corpora."""

from __future__ import annotations

import pytest

from erc_llm.data import GROUP_ID, UNKNOWN_ID, SpeakerRegistry, Utterance, load_split
from erc_llm.data.speakers import split_joint_name


@pytest.fixture(scope="module")
def registry(data_dir):
    return SpeakerRegistry.build([load_split("meld", "train", data_dir).dialogues,
                                  load_split("emorynlp", "train", data_dir).dialogues])


def test_same_person_across_corpora(registry, data_dir):
    meld_monica = next(u for u in load_split("meld", "test", data_dir).utterances() if u.speakers == ("Monica",))
    emory_monica = next(u for u in load_split("emorynlp", "test", data_dir).utterances()
                        if u.speakers == ("Monica Geller",))
    assert registry.primary_id(meld_monica) == registry.primary_id(emory_monica) == "monica_geller"
    for short, full in [("Ross", "Ross Geller"), ("Phoebe", "Phoebe Buffay"), ("Joey", "Joey Tribbiani"),
                        ("Mrs. Geller", "Judy Geller")]:
        assert registry.resolve(short) == registry.resolve(full) != UNKNOWN_ID


def test_ids_do_not_depend_on_which_corpora_built_it(registry, data_dir):
    meld_only = SpeakerRegistry.build([load_split("meld", "train", data_dir).dialogues])
    for name in ["Monica", "Rachel", "Ross", "Chandler", "Joey", "Phoebe", "Gunther"]:
        assert meld_only.resolve(name) == registry.resolve(name)


def test_joint_lines_roles_groups_unknown(registry):
    assert split_joint_name("Monica and Rachel") == ["Monica", "Rachel"]
    assert split_joint_name("Mr. and Mrs. Geller") == ["Mr. and Mrs. Geller"]
    joint = Utterance("meld/test/3", 0, ("Monica and Rachel",), "Hi!")
    assert registry.speaker_ids(joint) == ("monica_geller", "rachel_green")
    assert registry.resolve("Joey/Drake") == "joey_tribbiani"
    assert registry.resolve("All") == registry.resolve("#ALL#") == GROUP_ID
    assert registry.resolve("Joey's Sisters") == GROUP_ID
    woman_a, woman_b = registry.resolve("Woman", "meld/test/1"), registry.resolve("Woman", "meld/test/2")
    assert woman_a.startswith("role:woman") and woman_a != woman_b
    assert registry.resolve("Nurse #1", "d").startswith("role:")
    assert registry.resolve("Zebediah Quux") == UNKNOWN_ID
    assert registry.resolve("Zebediah Quux", frozen=False) == "zebediah_quux"


def test_save_load_round_trip(registry, tmp_path):
    path = tmp_path / "speakers.json"
    registry.save(path)
    again = SpeakerRegistry.load(path)
    assert again.to_dict() == registry.to_dict()
    for name in ["Monica", "Monica Geller", "Eric (photographer)", "Woman", "Nobody Known"]:
        assert again.resolve(name, "d1") == registry.resolve(name, "d1")
