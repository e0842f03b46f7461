"""Biographies, FAISS indices, retrieval sources, prompt datasets and CLIs on real MELD, with the model-free
hashing encoder (the real MiniLM runs in test_retrieval_real.py)."""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from erc_llm.data import MELD_LABELS, Dialogue, SpeakerRegistry, Utterance, load_split
from erc_llm.data.speakers import GROUP_ID, UNKNOWN_ID
from erc_llm.prompting import LeakageError, PromptConfig
from erc_llm.prompting.dataset import build_prompt_builder, labelling_dataset, load_prompt_settings, sft_dataset
from erc_llm.retrieval import (
    BiographyStore,
    ContextRetriever,
    HashingEncoder,
    ProfileConfig,
    RetrievalConfig,
    RetrievalIndex,
    VectorIndex,
    index_key,
    load_or_build_index,
    speaker_prefix_text,
)
from erc_llm.retrieval.biographies import SCHEMA_NAME, SCHEMA_VERSION, inputs_sha256, lines_by_speaker

HASHING = RetrievalConfig(embedding_model="hashing-256")


@pytest.fixture(scope="module")
def meld(data_dir):
    train = load_split("meld", "train", data_dir).dialogues
    return {"train": train, "test": load_split("meld", "test", data_dir).dialogues,
            "dev": load_split("meld", "dev", data_dir).dialogues, "registry": SpeakerRegistry.build([train])}


@pytest.fixture(scope="module")
def index(meld):
    return RetrievalIndex.build(meld["train"], meld["registry"], MELD_LABELS, "meld", HASHING)


# ---- biographies ---------------------------------------------------------------------------------------------
def test_profile_counts_shifts_and_characteristic_lines(meld):
    store = BiographyStore.build(meld["train"], meld["registry"], MELD_LABELS, "meld")
    monica = store.records["monica_geller"]
    lines = lines_by_speaker(meld["train"], meld["registry"])["monica_geller"]
    assert monica.n_lines == len(lines) and monica.profile["emotion_counts"] == dict(
        sorted(Counter(u.label for u in lines).items(), key=lambda kv: (-kv[1], MELD_LABELS.index(kv[0]))))
    pairs = [(a.label, b.label) for a, b in zip(lines, lines[1:]) if a.dialogue_id == b.dialogue_id]
    assert monica.profile["n_pairs"] == len(pairs)
    assert monica.profile["n_same"] == sum(a == b for a, b in pairs)
    top_shift = Counter(f"{a}>{b}" for a, b in pairs if a != b).most_common(1)[0][0]
    assert next(iter(monica.profile["shift_counts"])) == top_shift
    # Characteristic lines are the speaker's own training lines, within the word limits, of distinct labels.
    texts = {(u.dialogue_id, u.index): u for u in lines}
    cfg = ProfileConfig()
    for quote in monica.profile["characteristic"]:
        utt = texts[(quote["dialogue_id"], quote["index"])]
        assert utt.text == quote["text"] and utt.label == quote["label"]
        assert cfg.min_words <= len(utt.text.split()) <= cfg.max_words
        assert f'"{utt.text}" ({utt.label})' in monica.profile_text
    assert len({q["label"] for q in monica.profile["characteristic"]}) == len(monica.profile["characteristic"]) == 2
    assert monica.profile_text.startswith(f"In training: {len(lines)} lines. Emotions: neutral ")
    assert "Monica" not in monica.profile_text.split("Characteristic")[0]  # the template names the speaker


def test_biography_artefact_is_versioned_deterministic_and_atomic(meld, tmp_path):
    first = BiographyStore.build(meld["train"], meld["registry"], MELD_LABELS, "meld").save(tmp_path / "a.jsonl")
    second = BiographyStore.build(meld["train"], meld["registry"], MELD_LABELS, "meld").save(tmp_path / "b.jsonl")
    assert first.read_bytes() == second.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl"]  # no temp files left
    header = json.loads(first.read_text().splitlines()[0])
    assert header["schema"] == SCHEMA_NAME and header["version"] == SCHEMA_VERSION
    assert header["source_splits"] == ["train"] and header["corpus"] == "meld"
    assert header["registry_ids"] == sorted(meld["registry"].people)
    assert header["inputs_sha256"] == inputs_sha256(meld["train"], meld["registry"])
    assert header["config"]["profile"]["num_characteristic"] == 2
    loaded = BiographyStore.load(first)
    assert loaded.records == BiographyStore.build(meld["train"], meld["registry"], MELD_LABELS, "meld").records
    first.write_text(first.read_text().replace(f'"version": {SCHEMA_VERSION}', '"version": 99', 1))
    with pytest.raises(ValueError, match="rebuild"):
        BiographyStore.load(first)


def test_biographies_refuse_evaluation_splits(meld):
    for split in ("dev", "test"):
        with pytest.raises(LeakageError, match="training data only"):
            BiographyStore.build(meld[split], meld["registry"], MELD_LABELS, "meld")
        with pytest.raises(LeakageError):
            RetrievalIndex.build(meld["train"][:5] + meld[split][:1], meld["registry"], MELD_LABELS, "meld", HASHING)


class FakeGenerator:
    """Records prompts; answers with the speaker name it finds, or nothing for one chosen speaker."""

    name = "fake"

    def __init__(self, silent: str) -> None:
        self.silent = silent
        self.calls: list[int] = []

    def __call__(self, prompts):
        self.calls.append(len(prompts))
        out = []
        for prompt in prompts:
            who = re.match(r"Lines spoken by (.+?) in a TV series", prompt[1]["content"]).group(1)
            out.append("" if who == self.silent else f"  {who} is   a person. ")
        return out


def test_llm_biographies_batch_store_prompts_and_fall_back(meld, tmp_path):
    store = BiographyStore.build(meld["train"], meld["registry"], MELD_LABELS, "meld")
    generator = FakeGenerator(silent="Ross Geller")
    cfg = RetrievalConfig().llm
    store.add_llm_biographies(meld["train"], meld["registry"], generator, cfg, generator.name)
    eligible = [r for r in store.records.values() if r.n_lines >= cfg.min_lines]
    assert sum(generator.calls) == len(eligible) and max(generator.calls) <= cfg.batch_size
    monica = store.records["monica_geller"]
    assert monica.llm_text == "Monica Geller is a person." and monica.llm_status == "generated"
    assert store.text("monica_geller") == monica.llm_text and store.text("monica_geller", "profile") != monica.llm_text
    assert monica.llm_prompt[1]["content"].count('\n- "') == cfg.max_lines  # evenly spaced lines, labelled
    ross = store.records["ross_geller"]
    assert ross.llm_text is None and ross.llm_status.startswith("fallback") and store.text("ross_geller") == ross.profile_text
    rare = next(r for r in store.records.values() if r.n_lines < cfg.min_lines)
    assert rare.llm_status.startswith("skipped") and store.text(rare.speaker_id) == rare.profile_text
    assert store.header["kind"] == "llm" and store.header["generator"] == "fake" and "llm" in store.header["config"]
    reloaded = BiographyStore.load(store.save(tmp_path / "bios.jsonl"))
    assert reloaded.kind == "llm" and reloaded.records == store.records
    with pytest.raises(LeakageError):
        store.add_llm_biographies(meld["test"], meld["registry"], generator, cfg)


def test_fold_biographies_for_training_prompts(meld, tmp_path):
    """Fold records leave their fold's dialogues out (LLM prompts too), round-trip, and serve training dialogues only."""
    train, registry = meld["train"], meld["registry"]
    store = BiographyStore.build(train, registry, MELD_LABELS, "meld", training_folds=4)
    assert len(store.folds) == 4 and set(store.dialogue_folds) == {d.id for d in train}
    assert set(store.dialogue_folds.values()) == {0, 1, 2, 3}
    dialogue = train[0]
    fold = store.dialogue_folds[dialogue.id]
    assert store.for_dialogue(dialogue).records is store.folds[fold] and store.fold_of(meld["test"][0]) is None
    assert store.for_dialogue(meld["test"][0]) is store
    rest = [d for d in train if store.dialogue_folds[d.id] != fold]
    assert store.folds[fold] == BiographyStore.build(rest, registry, MELD_LABELS, "meld").records
    generator = FakeGenerator(silent="nobody")
    cfg = RetrievalConfig().llm
    store.add_llm_biographies(train, registry, generator, cfg, generator.name)
    prompts = [r.llm_prompt for records in [store.records, *store.folds] for r in records.values() if r.llm_prompt]
    unique = {json.dumps(p) for p in prompts}
    assert sum(generator.calls) == len(unique) < len(prompts)  # a speaker absent from a fold: one generation
    monica = store.folds[fold]["monica_geller"]
    held_out = {u.text for d in train if store.dialogue_folds[d.id] == fold for u in d}
    shown = re.findall(r'^- "(.*)" \(\w+\)$', monica.llm_prompt[1]["content"], re.MULTILINE)
    assert shown and not set(shown) & (held_out - {u.text for d in rest for u in d})
    assert monica.llm_text == "Monica Geller is a person." and store.with_kind("llm").for_dialogue(dialogue).text(
        "monica_geller") == monica.llm_text
    reloaded = BiographyStore.load(store.save(tmp_path / "bios.jsonl"))
    assert reloaded.folds == store.folds and reloaded.dialogue_folds == store.dialogue_folds
    assert reloaded.records == store.records
    with pytest.raises(ValueError, match="training_folds"):
        BiographyStore.build(train, registry, MELD_LABELS, "meld", training_folds=1)
    assert index_key("meld", "x", HASHING, ["biographies"], "line", "profile") != index_key(
        "meld", "x", RetrievalConfig(embedding_model="hashing-256", training_folds=5), ["biographies"], "line", "profile")


# ---- FAISS --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_vector_index_kinds_find_themselves_and_round_trip(kind, tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex.build(vectors, kind, RetrievalConfig(ivf_nprobe=16))
    scores, rows = index.search(vectors[:200], 3)
    recall = float(np.mean(rows[:, 0] == np.arange(200)))
    assert recall == 1.0 if kind == "flat" else recall > 0.9
    assert np.all(scores[:, 0] >= scores[:, 1])
    index.save(tmp_path / "x.faiss")
    again = VectorIndex.load(tmp_path / "x.faiss", kind, RetrievalConfig(ivf_nprobe=16))
    assert np.array_equal(again.search(vectors[:50], 3)[1], index.search(vectors[:50], 3)[1])


def test_retrieval_index_persists_without_pickle_and_swaps_atomically(index, tmp_path):
    folder = index.save(tmp_path / "meld")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["biographies.jsonl", "manifest.json", "speakers.faiss", "speakers.ids.json", "speakers.json",
                     "utterances.faiss", "utterances.npy", "utterances.rows.json"]
    assert not any(p.suffix in (".pkl", ".pickle") for p in folder.iterdir())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["source_splits"] == ["train"] and manifest["counts"]["utterances"] == len(index.utterance_rows)
    assert manifest["embedding_model"] == "hashing-256" and manifest["utterance_index_kind"] == "flat"
    index.save(tmp_path / "meld")  # replacing a finished index leaves no temporary folder behind
    assert [p.name for p in tmp_path.iterdir()] == ["meld"]
    loaded = RetrievalIndex.load(folder)
    assert loaded.speaker_ids == index.speaker_ids and loaded.utterance_rows == index.utterance_rows
    assert np.array_equal(loaded.utterance_vectors, index.utterance_vectors)
    assert loaded.biographies.records == index.biographies.records


def test_index_cache_is_keyed_by_config(meld, tmp_path, monkeypatch):
    args = (tmp_path, "meld", meld["train"], meld["registry"], MELD_LABELS)
    first, folder = load_or_build_index(*args, config=HASHING, parts=["biographies"])
    monkeypatch.setattr(RetrievalIndex, "build", classmethod(lambda *a, **k: pytest.fail("rebuilt")))
    again, same = load_or_build_index(*args, config=HASHING, parts=["biographies"])
    assert same == folder and again.biographies.records == first.biographies.records
    monkeypatch.undo()
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "version": 0}))
    rebuilt, same = load_or_build_index(*args, config=HASHING, parts=["biographies"])  # old schema: rebuilt
    assert same == folder and json.loads((folder / "manifest.json").read_text())["version"] == manifest["version"]
    _, other = load_or_build_index(*args, config=HASHING, parts=["biographies"], biography_kind="profile",
                                   demonstration_query="with_previous")
    assert other != folder


# ---- retrieval sources ------------------------------------------------------------------------------------
def test_demonstrations_come_from_other_training_dialogues(index, meld):
    retriever = ContextRetriever(index, encoder=HashingEncoder(256))
    train_ids = {d.id for d in meld["train"]}
    for dialogue in meld["train"][:20] + meld["test"][:20]:
        for utt in dialogue:
            demos = retriever.demonstrations(utt, dialogue, 3)
            assert len(demos) == 3
            assert all(d.dialogue_id in train_ids and d.dialogue_id != dialogue.id for d in demos)
            assert len({d.text.lower() for d in demos}) == 3
    # A training line's own text is found in another dialogue, never the line itself.
    dialogue = meld["train"][0]
    demos = retriever.demonstrations(dialogue[0], dialogue, 5)
    assert all((d.dialogue_id, d.index) != dialogue[0].key for d in demos)


def test_unseen_speakers_get_nearest_profile_or_none(index, meld):
    nearest = ContextRetriever(index, encoder=HashingEncoder(256))
    none = ContextRetriever(index, unseen_speaker_biography="none", encoder=HashingEncoder(256))
    registry = meld["registry"]
    seen = {"unknown": 0, "role": 0, "group": 0}
    for dialogue in meld["test"]:
        for utt in dialogue:
            speaker_id = registry.primary_id(utt)
            bio, plain = nearest.biography(speaker_id, utt, dialogue), none.biography(speaker_id, utt, dialogue)
            if speaker_id == GROUP_ID:
                seen["group"] += 1
                assert bio is None and plain is None
            elif speaker_id == UNKNOWN_ID or speaker_id.startswith("role:"):
                seen["unknown" if speaker_id == UNKNOWN_ID else "role"] += 1
                assert plain is None and bio.startswith("Not seen in training; speaks most like ")
                neighbour, score = nearest.nearest_known_speaker(utt, dialogue)
                assert index.biographies.records[neighbour].n_lines >= index.config.neighbour_min_lines
                assert index.biographies.text(neighbour) in bio
            else:
                assert bio == plain == index.biographies.text(speaker_id)
    assert min(seen.values()) > 0


def test_speaker_prefix_is_causal():
    lines = [("Ann", "first from ann"), ("Bo", "bo talks"), ("Ann", "second from ann"), ("Ann", "target line"),
             ("Ann", "later line")]
    dialogue = Dialogue("x/test/1", "x", "test",
                        [Utterance("x/test/1", i, (who,), text) for i, (who, text) in enumerate(lines)])
    assert speaker_prefix_text(dialogue[3], dialogue) == "first from ann\nsecond from ann\ntarget line"
    assert speaker_prefix_text(dialogue[3], dialogue, max_chars=30) == "second from ann\ntarget line"
    assert speaker_prefix_text(dialogue[1], dialogue) == "bo talks"


def test_knn_labels_cover_the_split(index, meld):
    retriever = ContextRetriever(index, encoder=HashingEncoder(256))
    predictions = retriever.knn_labels(meld["test"][:30])
    assert len(predictions) == sum(len(d) for d in meld["test"][:30])
    assert set(predictions.values()) <= set(MELD_LABELS.labels)


# ---- prompt datasets -----------------------------------------------------------------------------------------
def test_factory_and_datasets(meld, data_dir, tmp_path):
    plain = build_prompt_builder(PromptConfig(), "meld", data_dir, tmp_path)
    assert plain.biographies is None and not any(tmp_path.iterdir())  # nothing to build without sources
    config = PromptConfig(use_biography=True, use_demonstrations=True, num_demonstrations=2, past_window=2)
    builder = build_prompt_builder(config, "meld", data_dir, tmp_path, retrieval=HASHING)
    assert isinstance(builder.biographies, ContextRetriever) and builder.biographies is builder.demonstrations
    sft = sft_dataset(builder, meld["train"][:15], assistant_turn=True)
    assert sft.column_names == ["messages", "dialogue_id", "index", "utterance_id", "target_id", "speaker", "label",
                                "completion"]
    row = sft[0]
    assert row["messages"][-1] == {"role": "assistant", "content": row["completion"]} and row["completion"] == row["label"]
    assert "Similar lines from other scenes" in row["messages"][1]["content"]
    rows = labelling_dataset(builder, meld["test"][:10])
    assert len(rows) == sum(len(d) for d in meld["test"][:10]) and "completion" not in rows.column_names
    assert rows[0]["target_id"] == meld["test"][0][0].utterance_id
    with pytest.raises(ValueError, match="rounds"):
        labelling_dataset(build_prompt_builder(PromptConfig(use_history=True), "meld", data_dir), meld["test"][:2])
    # The second factory call reuses the cached index folder.
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 1
    build_prompt_builder(config, "meld", data_dir, tmp_path, retrieval=HASHING)
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 1


def test_prompt_settings_yaml(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("model_name_or_path: x\nuse_biography: true\npast_window: 3\nretrieval:\n  index_kind: hnsw\n")
    prompt, retrieval = load_prompt_settings(path)
    assert prompt.use_biography and prompt.past_window == 3 and retrieval.index_kind == "hnsw"
    path.write_text("prompt:\n  use_demonstrations: true\nretrieval:\n  nope: 1\n")
    with pytest.raises(ValueError, match="unknown retrieval setting"):
        load_prompt_settings(path)
    with pytest.raises(ValueError, match="demonstration_query"):
        PromptConfig(demonstration_query="everything")
    configs = sorted((Path(__file__).resolve().parents[1] / "retrieval" / "configs").glob("*.yaml"))
    loaded = {p.stem: load_prompt_settings(p) for p in configs}
    assert loaded["all_sources"][0].use_biography and loaded["all_sources"][0].use_demonstrations
    assert loaded["hnsw"][1].index_kind == "hnsw" and loaded["ivf"][1].index_kind == "ivf"
    assert loaded["llm_biographies"][0].biography_kind == "llm" and loaded["llm_biographies"][1].llm.min_lines == 5


# ---- CLI ------------------------------------------------------------------------------------------------------
def run_cli(argv: list[str]) -> int:
    from erc_llm.prompting.cli import register_cli as prompts_cli
    from erc_llm.retrieval.cli import register_cli as index_cli

    parser = argparse.ArgumentParser(prog="erc-llm")
    sub = parser.add_subparsers(dest="command", required=True)
    index_cli(sub)
    prompts_cli(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_index_build_query_and_prompts_show(data_dir, tmp_path, capsys):
    config = tmp_path / "cfg.yaml"
    config.write_text("retrieval:\n  embedding_model: hashing-256\n")
    out = tmp_path / "idx"
    assert run_cli(["index", "build", "--corpus", "meld", "--data-dir", str(data_dir), "--out", str(out),
                    "--config", str(config)]) == 0
    assert "1038 dialogues, 167 speakers" in capsys.readouterr().out
    assert run_cli(["index", "query", str(out), "I can't believe you did that!", "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits["utterances"]) == 2 and len(hits["speakers"]) == 2
    assert hits["utterances"][0]["dialogue_id"].startswith("meld/train/")
    assert run_cli(["prompts", "show", "--corpus", "meld", "--split", "test", "--dialogue", "meld/test/12",
                    "--index", "3", "--all-sources", "--config", str(config), "--data-dir", str(data_dir),
                    "--index-dir", str(tmp_path / "cache")]) == 0
    shown = capsys.readouterr()
    assert "[system]" in shown.out and "Similar lines from other scenes" in shown.out
    assert "About Ross: In training:" in shown.out and "Ross's most recent emotions" in shown.out
    assert "k-NN votes" in shown.err
    Path(tmp_path / "preds.jsonl").write_text(
        "\n".join(json.dumps({"dialogue_id": "meld/test/12", "utterance_index": i, "pred": "fear"}) for i in range(3)))
    assert run_cli(["prompts", "show", "--corpus", "meld", "--dialogue", "12", "--index", "3", "--all-sources",
                    "--config", str(config), "--data-dir", str(data_dir), "--index-dir", str(tmp_path / "cache"),
                    "--predictions", str(tmp_path / "preds.jsonl")]) == 0
    assert "most recent emotions, oldest first: fear" in capsys.readouterr().out
