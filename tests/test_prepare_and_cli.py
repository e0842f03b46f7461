"""The prepare step (offline, through a file:// mirror) and the `erc-llm data` commands."""

from __future__ import annotations

import json

import pytest

from erc_llm.cli import main
from erc_llm.data.prepare import PrepareError, prepare


def test_prepare_downloads_and_verifies(data_dir, tmp_path):
    results = prepare(["meld", "emorynlp"], tmp_path, mirror=data_dir.as_uri())
    assert {(r.corpus, r.split, r.action) for r in results} >= {("meld", "train", "downloaded"),
                                                                  ("emorynlp", "test", "downloaded")}
    assert {(r.corpus, r.split): r.utterances for r in results}[("meld", "test")] == 2610
    again = prepare(["meld"], tmp_path)
    assert all(r.action == "present" for r in again)
    assert not list(tmp_path.rglob("*.part"))


def test_prepare_rejects_a_changed_file(data_dir, tmp_path):
    prepare(["meld"], tmp_path, mirror=data_dir.as_uri())
    target = tmp_path / "meld" / "dev.csv"
    target.write_text(target.read_text().replace("neutral", "joy", 1))
    with pytest.raises(PrepareError, match="sha256"):
        prepare(["meld"], tmp_path)


def test_prepare_reports_unreachable_source(tmp_path):
    with pytest.raises(PrepareError, match="could not fetch"):
        prepare(["meld"], tmp_path, mirror=(tmp_path / "nowhere").as_uri())


def test_cli_stats_and_validate(data_dir, capsys, tmp_path):
    assert main(["data", "stats", "--data-dir", str(data_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["corpus"], r["split"]): r["utterances"] for r in rows}[("emorynlp", "test")] == 1328
    assert main(["data", "validate", "meld", "--data-dir", str(data_dir)]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"dialogue_id": "a", "utterances": [{"speaker": "A", "text": "hi", "label": "glee"}]}\n')
    assert main(["data", "validate", str(bad), "--labels", "meld"]) == 1
    assert "glee" in capsys.readouterr().out


def test_cli_data_error_is_one_line(tmp_path, capsys):
    (tmp_path / "meld").mkdir()
    (tmp_path / "meld" / "train.csv").write_text("Utterance,Speaker\nhi,Ross\n")
    assert main(["data", "stats", "--corpus", "meld", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "train.csv" in err and "missing column" in err


def test_cli_speakers_and_export(data_dir, tmp_path, capsys):
    out = tmp_path / "speakers.json"
    assert main(["speakers", "build", "--data-dir", str(data_dir), "--out", str(out)]) == 0
    assert main(["speakers", "resolve", str(out), "Monica", "Monica Geller"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[-2:]
    assert [line.split("\t")[1] for line in lines] == ["monica_geller", "monica_geller"]
    assert main(["data", "export", "meld", "--split", "dev", "--format", "jsonl", "--out", str(tmp_path / "x"),
                 "--data-dir", str(data_dir)]) == 0
    assert (tmp_path / "x" / "dev.jsonl").read_text().count("\n") == 1 + 114  # {"labels": [...]} + dialogues
