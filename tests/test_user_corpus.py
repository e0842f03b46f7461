"""A user's own corpus: every way to name data, custom label sets, extra columns, encoding errors, and the whole
pipeline (validate, speakers, SFT with the real SmolLM2-135M, labelling of unlabelled dialogues, baseline, compare)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from erc_llm.data import DataFormatError, DataSourceError, LabelSet, load_split, resolve_labels, resolve_source
from erc_llm.data.sources import split_of
from erc_llm.evaluation.rundir import PredictionRecord

REPO = Path(__file__).resolve().parents[1]
LABELS = ["happy", "sad", "angry", "neutral"]
LINES = {
    "happy": ["I love this, it is wonderful!", "We won the prize, hooray!", "What a lovely surprise, thank you!",
              "This is the best day ever.", "I am so glad you came!"],
    "sad": ["I miss her so much.", "Nobody came to my party.", "I lost my job today.", "It is all over now.",
            "I feel so alone tonight."],
    "angry": ["Stop lying to me!", "This is outrageous!", "Get out of my room now!", "You broke it again!",
              "I am sick of your excuses!"],
    "neutral": ["The meeting is at noon.", "Pass me the salt.", "The bus leaves at five.", "It is on the table.",
                "I will check the schedule."],
}
MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"


def synthetic_dialogues(seed: int, n: int, labelled: bool = True) -> list[dict]:
    """`n` short dialogues of three speakers; labels from LABELS, one extra field per utterance in `meta`."""
    rng = random.Random(seed)
    out = []
    for d in range(n):
        utterances = []
        for i in range(rng.randint(4, 6)):
            label = rng.choice(LABELS)
            utt = {"speaker": ["Ann", "Bo", "Cy"][(i + d) % 3], "text": rng.choice(LINES[label]),
                   "utterance_id": f"d{seed}_{d}_{i}", "meta": {"call_id": f"c{seed}{d:02d}"}}
            if labelled:
                utt["label"] = label
            utterances.append(utt)
        out.append({"dialogue_id": f"s{seed}-{d}", "utterances": utterances})
    return out


def write_jsonl(path: Path, rows: list[dict], header: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([json.dumps(header)] if header else []) + [json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def synthetic_corpus(root: Path) -> Path:
    """<root>/corpus/{train,dev,test}.jsonl + labels.txt (12 dialogues, 4 labels)."""
    folder = root / "corpus"
    write_jsonl(folder / "train.jsonl", synthetic_dialogues(1, 8))
    write_jsonl(folder / "dev.jsonl", synthetic_dialogues(2, 2))
    write_jsonl(folder / "test.jsonl", synthetic_dialogues(3, 2))
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return folder


def meld_rows(data_dir: Path, split: str, n: int) -> list[str]:
    return (data_dir / "meld" / f"{split}.csv").read_text(encoding="utf-8").splitlines()[: n + 1]


# ---- naming data --------------------------------------------------------------------------------------------


def test_split_words_in_file_names():
    assert split_of("test.csv") == "test" and split_of("calls_dev.jsonl") == "dev"
    assert split_of("train_sent_emo.csv") == "train" and split_of("emotion-detection-tst.json") == "test"
    assert split_of("validation.jsonl") == "dev" and split_of("calls.jsonl") is None


def test_meld_style_csv_file_with_sibling_splits_and_extra_columns(tmp_path, data_dir):
    for split in ("train", "dev", "test"):
        rows = meld_rows(data_dir, split, 30)
        rows = [rows[0] + ",Clip"] + [f"{row},clips/{split}/{i}.mp4" for i, row in enumerate(rows[1:])]
        (tmp_path / "release").mkdir(exist_ok=True)
        (tmp_path / "release" / f"{split}_sent_emo.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    source = resolve_source(tmp_path / "release" / "test_sent_emo.csv")
    assert source.splits == ["train", "dev", "test"] and source.name == "release"
    assert source.label_set is None and source.default_set().name == "meld"
    test = source.load("test")
    first = test.dialogues[0][0]
    assert first.dialogue_id.startswith("release/test/") and first.meta["Clip"] == "clips/test/0.mp4"
    assert first.meta["sentiment"]  # MELD's own extra columns stay as before
    assert source.label_set_for(source.load("train"), warn=False).name == "meld"
    # the same file through the one loader every command uses
    assert load_split(str(tmp_path / "release" / "dev_sent_emo.csv"), "dev").n_utterances == 30


def test_export_to_jsonl_declares_labels_and_keeps_meta(tmp_path, data_dir, capsys):
    from erc_llm.cli import main

    (tmp_path / "release").mkdir()
    rows = meld_rows(data_dir, "dev", 12)
    rows = [rows[0] + ",Clip"] + [f"{row},c{i}.mp4" for i, row in enumerate(rows[1:])]
    (tmp_path / "release" / "dev.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert main(["data", "export", str(tmp_path / "release" / "dev.csv"), "--format", "jsonl", "--labels", "meld",
                 "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "dev.jsonl").read_text().splitlines()[0]) == {"labels": list(
        resolve_labels("meld").labels)}
    again = resolve_source(tmp_path / "out")
    assert again.label_set.labels == resolve_labels("meld").labels
    assert again.load("dev").dialogues[0][0].meta["Clip"] == "c0.mp4"
    assert main(["data", "validate", str(tmp_path / "out")]) == 0
    assert "0 invalid row(s)" in capsys.readouterr().out


def test_folder_of_split_files_and_declared_labels(tmp_path):
    folder = synthetic_corpus(tmp_path)
    source = resolve_source(folder)
    assert source.splits == ["train", "dev", "test"] and source.name == "corpus"
    assert list(source.label_set.labels) == LABELS and source.label_origin.endswith("labels.txt")
    loaded = source.load("dev")
    assert loaded.dialogues[0][0].meta == {"call_id": "c200"}
    (folder / "labels.txt").write_text("happy\nsad\n")  # a declared set that misses labels the data uses
    with pytest.raises(DataFormatError, match=r"train.jsonl, line 1, utterance \d+: unknown label"):
        resolve_source(folder).load("train")


def test_single_file_serves_one_split_only(tmp_path):
    path = write_jsonl(tmp_path / "calls.jsonl", synthetic_dialogues(4, 2, labelled=False))
    source = resolve_source(path)
    assert source.splits == ["custom"] and not source.has_split("train")
    assert source.load("test").split == "test"  # labelling a file: any split name
    with pytest.raises(DataSourceError, match="would both read"):
        source.require_distinct(["train", "dev", "test"])  # training and scoring on one file: refused
    named = write_jsonl(tmp_path / "x_train.jsonl", synthetic_dialogues(5, 2))
    with pytest.raises(DataSourceError, match="no 'dev' split"):
        resolve_source(named).path("dev")


def test_wrong_names_are_errors(tmp_path):
    with pytest.raises(DataSourceError, match="unknown corpus 'mled'"):
        resolve_source("mled")
    with pytest.raises(DataFormatError, match="file not found"):
        resolve_source(tmp_path / "missing.csv")
    (tmp_path / "odd.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataFormatError, match="odd.csv, header: neither MELD-style"):
        resolve_source(tmp_path / "odd.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="no split files"):
        resolve_source(tmp_path / "empty")


# ---- label sets -----------------------------------------------------------------------------------------------


def test_label_sets_by_name_list_file_and_jsonl_header(tmp_path):
    assert resolve_labels("iemocap").labels == ("happy", "sad", "neutral", "angry", "excited", "frustrated")
    assert resolve_labels("IEMOCAP").canonical("fru") == "frustrated"
    assert resolve_labels("Happy, sad,angry ,neutral").labels == tuple(LABELS)
    (tmp_path / "l.json").write_text(json.dumps({"labels": LABELS, "aliases": {"joy": "happy"}}))
    assert resolve_labels(str(tmp_path / "l.json")).canonical("Joy") == "happy"
    for bad, match in (("nope", "unknown label set"), ("a,a,b", "duplicate"), ("a,", "empty label")):
        with pytest.raises(DataSourceError, match=match):
            resolve_labels(bad)
    path = write_jsonl(tmp_path / "h.jsonl", synthetic_dialogues(6, 2), header={"labels": LABELS})
    source = resolve_source(path)
    assert list(source.label_set.labels) == LABELS and source.label_origin.endswith("line 1")
    assert source.load("custom").n_utterances > 0  # the header line is not a dialogue
    with pytest.raises(DataSourceError, match="differ from those declared"):
        resolve_source(path, labels="meld")


def test_undeclared_labels_are_reported_not_accepted_silently(tmp_path, capsys):
    from erc_llm.cli import main

    rows = synthetic_dialogues(7, 3)
    rows[0]["utterances"][0]["label"] = "hapy"  # a typo the user should see
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    assert main(["data", "validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "none declared" in out and "hapy (1)" in out
    assert main(["data", "validate", str(path), "--labels", ",".join(LABELS)]) == 1
    assert "unknown label 'hapy'" in capsys.readouterr().out
    with pytest.raises(DataSourceError, match="no label set declared and no labelled"):
        resolve_source(write_jsonl(tmp_path / "u.jsonl", synthetic_dialogues(8, 1, labelled=False))).label_set_for([])


def test_non_utf8_byte_reported_at_its_record(tmp_path, data_dir):
    raw = (data_dir / "meld" / "test.csv").read_bytes()
    start = raw.index(b'1572,"Oh, thank you.')  # record 1500 of MELD test, on line 1501
    bad = tmp_path / "test.csv"
    bad.write_bytes(raw[:start] + b'1572,"Oh, th\xe9nk' + raw[start + len(b'1572,"Oh, thank'):])
    with pytest.raises(DataFormatError) as info:
        load_split(str(bad), "test")
    assert "row 1500 (line 1501): not valid UTF-8: byte(s) e9" in str(info.value)
    loaded = load_split(str(bad), "test", skip_invalid=True)
    assert loaded.n_utterances == 2609 and str(loaded.skipped[0].row) == "1500 (line 1501)"


def test_training_curves_plot(tmp_path):
    from erc_llm.training.curves import curve_points, write_curves

    history = [{"loss": 2.0, "step": 1}, {"eval_weighted_f1": 0.2, "eval_macro_f1": 0.1, "step": 1},
               {"loss": 1.5, "step": 2}, {"eval_weighted_f1": 0.3, "eval_macro_f1": 0.2, "step": 2},
               {"train_runtime": 3.0, "step": 2}]
    points = curve_points(history)
    assert points["loss"] == [(1, 2.0), (2, 1.5)] and points["eval_weighted_f1"] == [(1, 0.2), (2, 0.3)]
    path = write_curves(tmp_path, history, title="run")
    assert path.name == "training_curves.png" and path.read_bytes()[:4] == b"\x89PNG"
    assert write_curves(tmp_path / "empty", []).stat().st_size > 0  # no evaluation yet: empty axes, no crash


def test_predictions_keep_meta():
    record = PredictionRecord("d", 0, "Ann", "hi", "happy", gold=None, meta={"call_id": "c1"})
    assert record.to_dict()["meta"] == {"call_id": "c1"}
    assert PredictionRecord.from_dict(record.to_dict()) == record
    assert "meta" not in PredictionRecord("d", 0, "Ann", "hi", "happy").to_dict()


# ---- the label set reaches prompts, answer tokens, scoring, weights and metrics ----------------------------


def test_custom_label_set_through_prompts_scoring_weights_and_metrics(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from erc_llm.data import SpeakerRegistry
    from erc_llm.evaluation.metrics import compute_metrics
    from erc_llm.labelling.scorers import HFLabelScorer
    from erc_llm.offline_models import resolve_model
    from erc_llm.prompting.answer import label_tokens
    from erc_llm.prompting.builder import PromptBuilder
    from erc_llm.prompting.config import PromptConfig
    from erc_llm.training.data import class_weights

    # "fear" and "frustrated" share SmolLM2's first token: scoring must fall back to whole label sequences
    labels = LabelSet.from_labels("mine", ["happy", "sad", "fear", "frustrated"])
    rows = synthetic_dialogues(9, 2)
    for d in rows:
        for u in d["utterances"]:
            u["label"] = {"angry": "frustrated", "neutral": "fear"}.get(u["label"], u["label"])
    train = resolve_source(write_jsonl(tmp_path / "train.jsonl", rows), labels=",".join(labels)).load("train")
    builder = PromptBuilder(PromptConfig(past_window=2), labels, SpeakerRegistry.build([train.dialogues]))
    examples = builder.training_examples(train.dialogues)
    assert "happy, sad, fear, frustrated" in examples[0].messages[-1]["content"]
    assert {e.label for e in examples} <= set(labels.labels)

    path = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    answer = label_tokens(tokenizer, labels.labels)
    assert not answer.first_token_unique
    model = AutoModelForCausalLM.from_pretrained(path)
    scorer = HFLabelScorer(model, tokenizer, labels.labels, batch_size=2)
    assert scorer.full_sequence
    scores = scorer.score([e.messages for e in examples[:2]])
    assert all(set(s) == set(labels.labels) and abs(sum(s.values()) - 1) < 1e-4 for s in scores)

    weights = class_weights([e.label for e in examples], "inverse")
    assert set(weights) == {e.label for e in examples}
    metrics = compute_metrics([e.label for e in examples], ["happy"] * len(examples), labels.labels)
    assert metrics["labels"] == list(labels.labels) and set(metrics["per_class"]) == set(labels.labels)


# ---- the whole pipeline on a user corpus ---------------------------------------------------------------------


def _run(cmd: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{cmd}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_user_corpus_end_to_end(tmp_path):
    """validate -> speakers -> SFT (real SmolLM2-135M, biographies + emotion history from the user's train split)
    -> label unlabelled dialogues -> label the test split -> encoder-fusion baseline -> compare, with a 4-label
    set declared in labels.txt."""
    from erc_llm.cli import main

    folder = synthetic_corpus(tmp_path)
    unlabelled = write_jsonl(tmp_path / "new" / "calls.jsonl", synthetic_dialogues(4, 2, labelled=False))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    erc = [sys.executable, "-m", "erc_llm.cli"]
    assert "labels: corpus ['happy', 'sad', 'angry', 'neutral']" in _run([*erc, "data", "validate", str(folder)], env)
    _run([*erc, "speakers", "build", "--corpus", str(folder), "--out", str(tmp_path / "speakers.json")], env)
    speakers = json.loads((tmp_path / "speakers.json").read_text())["speakers"]
    assert {s["id"] for s in speakers} == {"ann", "bo", "cy"} and speakers[0]["counts"] == {"corpus/train": 13}

    sft, indices = tmp_path / "sft", tmp_path / "indices"
    _run([sys.executable, str(REPO / "recipes" / "sft.py"), "--config",
          str(REPO / "recipes" / "smollm2-135m" / "sft" / "smoke.yaml"), "--corpus", str(folder),
          "--output_dir", str(sft), "--index_dir", str(indices), "--use_biography", "true", "--use_history", "true",
          "--train_subsample", "null", "--eval_subsample", "null", "--test_split", "test",
          "--max_steps", "2", "--eval_steps", "1", "--save_steps", "2", "--report_to", "tensorboard"], env)
    metrics = json.loads((sft / "metrics.json").read_text())
    assert metrics["corpus"] == "corpus" and metrics["labels"] == LABELS and metrics["n"] == 9
    assert (sft / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # loss + dev W-F1 per evaluation
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((sft / "runs").rglob("events.out.tfevents.*")).parent)).Reload()
    assert {"train/loss", "eval/weighted_f1"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("eval/weighted_f1")) == 2

    common = ["--backend", "hf", "--adapter", str(sft), "--index_dir", str(indices)]
    assert main(["label", *common, "--corpus", str(unlabelled), "--split", "calls",
                 "--output_dir", str(tmp_path / "label_calls")]) == 0
    calls = [json.loads(line) for line in (tmp_path / "label_calls" / "predictions.jsonl").read_text().splitlines()]
    assert len(calls) == 9 and all(r["gold"] is None and r["pred"] in LABELS for r in calls)
    assert all(set(r["scores"]) == set(LABELS) and r["meta"]["call_id"].startswith("c4") for r in calls)
    assert not (tmp_path / "label_calls" / "metrics.json").exists()  # nothing to score without gold labels

    assert main(["label", *common, "--corpus", str(folder), "--split", "test",
                 "--output_dir", str(tmp_path / "label_test")]) == 0

    baseline = tmp_path / "baseline"  # the encoder-fusion baseline on the same folder
    _run([sys.executable, str(REPO / "recipes" / "baseline.py"), "--config",
          str(REPO / "recipes" / "encoder-fusion" / "meld_text_context.yaml"), "--corpus", str(folder),
          "--output_dir", str(baseline), "--num_train_epochs", "2"], {**env, "ERC_LLM_CACHE": str(tmp_path / "cache")})
    base_rows = [json.loads(line) for line in (baseline / "test" / "predictions.jsonl").read_text().splitlines()]
    assert len(base_rows) == 9 and base_rows[0]["meta"]["call_id"].startswith("c3")

    assert main(["compare", str(baseline / "test"), str(sft), str(tmp_path / "label_test"), "--out",
                 str(tmp_path / "report"), "--labels-from-run", "--bootstrap", "20", "--no-figures"]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "corpus / test" in report and "happy, sad, angry, neutral" in report
    assert all(f"| {name} |" in report for name in ("encoder-fusion", "sft", "llm:sft"))
