"""Malformed input: every error names the file and the row; skipping is explicit and counted."""

from __future__ import annotations

import json

import pytest

from erc_llm.data import MELD_LABELS, DataFormatError, load_emorynlp_csv, load_emorynlp_json, load_jsonl, load_meld_csv
from erc_llm.data.text import clean_text

HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
GOOD = '1,Hi there.,Ross,neutral,neutral,0,0,1,1,"00:00:01,000","00:00:02,000"\n'


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def raises_at(path, row_fragment, reason_fragment, loader, *args):
    with pytest.raises(DataFormatError) as info:
        loader(path, *args)
    message = str(info.value)
    assert str(path) in message and row_fragment in message and reason_fragment in message, message
    return info.value


def test_missing_column(tmp_path):
    path = write(tmp_path, "m.csv", "Utterance,Speaker,Dialogue_ID,Utterance_ID\nhi,Ross,0,0\n")
    raises_at(path, "header", "Emotion", load_meld_csv, "train")


def test_unknown_label_names_row(tmp_path):
    path = write(tmp_path, "m.csv", HEADER + GOOD + '2,Hey!,Rachel,happy,positive,0,1,1,1,,\n')
    error = raises_at(path, "row 2", "unknown label 'happy'", load_meld_csv, "train")
    assert error.row.startswith("2")


def test_empty_utterance(tmp_path):
    path = write(tmp_path, "m.csv", HEADER + GOOD + '2,  ,Rachel,joy,positive,0,1,1,1,,\n')
    raises_at(path, "row 2", "empty utterance", load_meld_csv, "train")


def test_broken_quoting(tmp_path):
    path = write(tmp_path, "m.csv", HEADER + GOOD + '2,"Hey "there" you,Rachel,joy,positive,0,1,1,1,,\n')
    raises_at(path, "row 2", "", load_meld_csv, "train")


def test_wrong_field_count(tmp_path):
    path = write(tmp_path, "m.csv", HEADER + GOOD + "2,Hey,Rachel,joy\n")
    raises_at(path, "row 2", "fields", load_meld_csv, "train")


def test_bad_integer_and_duplicate(tmp_path):
    path = write(tmp_path, "m.csv", HEADER + GOOD + "2,Hey,Rachel,joy,positive,x,1,1,1,,\n")
    raises_at(path, "row 2", "Dialogue_ID", load_meld_csv, "train")
    path = write(tmp_path, "d.csv", HEADER + GOOD + GOOD.replace("1,Hi", "2,Hi"))
    raises_at(path, "row 2", "duplicate utterance", load_meld_csv, "train")


def test_skip_invalid_counts_rows(tmp_path):
    path = write(tmp_path, "m.csv", HEADER + GOOD + '2,Hey!,Rachel,happy,positive,0,1,1,1,,\n3,Yo,Joey,joy,positive,0,2,1,1,,\n')
    loaded = load_meld_csv(path, "train", skip_invalid=True)
    assert loaded.n_utterances == 2 and len(loaded.skipped) == 1
    assert "happy" in loaded.skipped[0].reason and str(loaded.skipped[0].row).startswith("2")


def test_emorynlp_bad_speaker_literal(tmp_path):
    header = "Utterance,Speaker,Emotion,Scene_ID,Utterance_ID,Season,Episode,Start_Time,End_Time\n"
    path = write(tmp_path, "e.csv", header + "Hi,['Ross Geller'],Joyful,1,1,1,1,,\nYo,[Ross,Mad,1,2,1,1,,\n")
    raises_at(path, "row 2", "list literal", load_emorynlp_csv, "train")


def test_emorynlp_json_errors(tmp_path):
    path = write(tmp_path, "bad.json", '{"episodes": [ {"scenes": [ }')
    raises_at(path, "line", "invalid JSON", load_emorynlp_json, "dev")
    doc = {"episodes": [{"episode_id": "s01_e01", "scenes": [{"scene_id": "s01_e01_c01", "utterances": [
        {"utterance_id": "s01_e01_c01_u001", "speakers": ["Ross Geller"], "transcript": "Hi", "emotion": "Angry"}]}]}]}
    path = write(tmp_path, "lab.json", json.dumps(doc))
    raises_at(path, "s01_e01_c01_u001", "unknown label 'Angry'", load_emorynlp_json, "dev")


def test_jsonl_errors_name_line_and_utterance(tmp_path):
    good = {"dialogue_id": "a", "utterances": [{"speaker": "Ann", "text": "Hello"}]}
    bad = {"dialogue_id": "b", "utterances": [{"speaker": "Ann", "text": "Hi"}, {"text": "no speaker"}]}
    path = write(tmp_path, "u.jsonl", json.dumps(good) + "\n" + json.dumps(bad) + "\n{not json\n")
    raises_at(path, "line 2, utterance 1", "speaker", load_jsonl)
    loaded = load_jsonl(path, skip_invalid=True)
    assert [d.id for d in loaded.dialogues] == ["a", "b"] and len(loaded.dialogues[1]) == 1
    assert [str(s.row) for s in loaded.skipped] == ["line 2, utterance 1", "line 3"]
    labelled = write(tmp_path, "l.jsonl", json.dumps({"dialogue_id": "x", "utterances": [
        {"speaker": "Ann", "text": "Yay", "label": "Joy"}, {"speaker": "Bo", "text": "Hm"}]}) + "\n")
    loaded = load_jsonl(labelled, label_set=MELD_LABELS)
    assert [u.label for u in loaded.dialogues[0]] == ["joy", None]
    with pytest.raises(DataFormatError, match="line 1, utterance 0.*unknown label"):
        write(tmp_path, "l2.jsonl", labelled.read_text().replace("Joy", "glee"))
        load_jsonl(tmp_path / "l2.jsonl", label_set=MELD_LABELS)


def test_missing_file_is_clear(tmp_path):
    raises_at(tmp_path / "nope.csv", "nope.csv", "not found", load_meld_csv, "train")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("I\u00e2\u20ac\u2122m fine", "I'm fine"),            # UTF-8 read as cp1252
        ("You\x92re here", "You're here"),                     # cp1252 byte read as latin-1
        ("Oh\u2026  wait\u2014no", "Oh... wait - no"),
        ("Caf\u00e9 \u00c2 ok", "Caf\u00e9 ok"),
        ("\u2018quoted\u2019 \u201cdouble\u201d", "'quoted' \"double\""),
    ],
)
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean
