"""Encoder-fusion baseline on real MELD rows with the real offline all-MiniLM-L6-v2 (text path with context)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from erc_llm.baseline import build_model, build_trainer, evaluate_splits, prepare_data, save_run
from erc_llm.baseline.config import BaselineDataConfig, BaselineModelConfig, BaselineTrainingArguments
from erc_llm.baseline.text import ContextWindowBuilder
from erc_llm.data import MELD_LABELS, load_split
from erc_llm.evaluation import read_metrics, read_predictions

REPO_ROOT = Path(__file__).resolve().parents[1]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from erc_llm.offline_models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(MINILM))


def test_context_window_keeps_target_and_marks_it(minilm_tokenizer, data_dir: Path):
    dialogue = next(d for d in load_split("meld", "dev", data_dir).dialogues if len(d) >= 5)
    builder = ContextWindowBuilder(minilm_tokenizer, 3, 1, "{speaker}: {text}", "* {speaker}: {text}", 48)
    windows = builder.dialogue_windows(dialogue)
    assert len(windows) == len(dialogue)
    for position, window in enumerate(windows):
        assert len(window) <= 48
        assert window.input_ids[0] == minilm_tokenizer.cls_token_id
        target_ids = [i for i, m in zip(window.input_ids, window.target_mask) if m]
        expected = minilm_tokenizer(f"* {dialogue[position].speaker}: {dialogue[position].text}",
                                    add_special_tokens=False)["input_ids"]
        assert target_ids == expected[: len(target_ids)] and target_ids  # cut only if it alone overflows
    # With room for everything: [CLS] line0 [SEP] line1 [SEP] * target2 [SEP] line3 [SEP], previous lines first.
    roomy = ContextWindowBuilder(minilm_tokenizer, 3, 1, "{speaker}: {text}", "* {speaker}: {text}", 512)
    window = roomy.dialogue_windows(dialogue)[2]
    lines = [minilm_tokenizer(f"{'* ' if i == 2 else ''}{u.speaker}: {u.text}", add_special_tokens=False)["input_ids"]
             for i, u in enumerate(dialogue.utterances[:4])]
    sep, cls = minilm_tokenizer.sep_token_id, minilm_tokenizer.cls_token_id
    assert list(window.input_ids) == [cls, *lines[0], sep, *lines[1], sep, *lines[2], sep, *lines[3], sep]
    start = 1 + len(lines[0]) + len(lines[1]) + 2
    assert list(window.target_mask) == [0] * start + [1] * len(lines[2]) + [0] * (len(window) - start - len(lines[2]))


def test_long_context_is_cut_before_target(minilm_tokenizer, data_dir: Path):
    dialogue = max(load_split("meld", "dev", data_dir).dialogues, key=len)
    builder = ContextWindowBuilder(minilm_tokenizer, 20, 0, "{speaker}: {text}", "* {speaker}: {text}", 32)
    last = builder.dialogue_windows(dialogue)[-1]
    assert len(last) <= 32 and sum(last.target_mask) > 0
    unlimited = ContextWindowBuilder(minilm_tokenizer, 20, 0, "{speaker}: {text}", "* {speaker}: {text}", 4096)
    assert len(unlimited.dialogue_windows(dialogue)[-1]) > len(last)


def _tiny_run_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["ERC_LLM_CACHE"] = str(tmp_path / "cache")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no busy-waiting OpenMP threads on a shared 2-core box
    return env


@pytest.mark.slow
def test_recipe_trains_frozen_text_context_on_real_meld(tmp_path: Path, data_dir: Path):
    """`accelerate launch recipes/baseline.py --config ...` end to end on a MELD slice."""
    output_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu",
        str(REPO_ROOT / "recipes" / "baseline.py"), "--config",
        str(REPO_ROOT / "recipes" / "encoder-fusion" / "meld_text_context.yaml"),
        "--data_dir", str(data_dir), "--max_train_dialogues", "12", "--max_eval_dialogues", "3",
        "--num_train_epochs", "3", "--max_length", "64", "--output_dir", str(output_dir), "--disable_tqdm", "true",
    ]
    result = subprocess.run(command, env=_tiny_run_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for split in ("dev", "test"):
        metrics = read_metrics(output_dir / split)
        predictions = read_predictions(output_dir / split)
        assert metrics["corpus"] == "meld" and metrics["split"] == split and metrics["system"] == "encoder-fusion"
        assert metrics["n"] == len(predictions) > 0
        assert "--config" in metrics["command"] and metrics["extra"]["modalities"] == ["text"]
        assert {p.pred for p in predictions} <= set(MELD_LABELS.labels)
        assert all(abs(sum(p.scores.values()) - 1) < 1e-3 for p in predictions)
    meta = json.loads((output_dir / "baseline_meta.json").read_text())
    assert meta["labels"] == list(MELD_LABELS.labels) and meta["best_checkpoint"]
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "config.yaml").is_file()
    # The cached context embeddings are a feature store named by encoder, settings and inputs.
    # Two per split: the context window (target+mean pooled) and the target line alone (add_utterance_embedding).
    stores = sorted((tmp_path / "cache" / "features").glob("text-*/manifest.json"))
    assert len(stores) == 6
    assert meta["input_dims"] == {"text": 3 * 384}


@pytest.mark.slow
def test_finetuned_encoder_with_speakers_moves_weights(tmp_path: Path, data_dir: Path):
    data_config = BaselineDataConfig(corpus="meld", data_dir=str(data_dir), max_train_dialogues=4,
                                     max_eval_dialogues=1, test_split=None, context_before=2, max_length=32,
                                     feature_cache_dir=str(tmp_path / "cache"))
    model_config = BaselineModelConfig(freeze_text_encoder=False, text_encoder_learning_rate=1e-4,
                                       use_speaker_embedding=True, text_projection_dim=32, head_hidden_dim=16,
                                       speaker_embedding_dim=32, fusion="mha", fusion_heads=2, loss="weighted_ce")
    model_config.check_against(data_config)
    training_args = BaselineTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3,
                                              per_device_train_batch_size=4, eval_strategy="steps", eval_steps=3,
                                              save_strategy="steps", save_steps=3, disable_tqdm=True,
                                              learning_rate=1e-3)
    data = prepare_data(data_config, model_config)
    assert data.splits["train"].windows is not None and data.splits["train"].text_features is None
    assert data.speaker_vocab[0] == "unknown" and "monica_geller" in data.speaker_vocab
    model = build_model(data, model_config)
    encoder_before = model.text_encoder.encoder.layer[0].attention.self.query.weight.detach().clone()
    speaker_before = model.speaker_embedding.weight.detach().clone()
    trainer = build_trainer(model, data, model_config, training_args)
    trainer.train()
    assert not torch.allclose(model.text_encoder.encoder.layer[0].attention.self.query.weight, encoder_before)
    assert not torch.allclose(model.speaker_embedding.weight, speaker_before)
    save_run(trainer, data, data_config, model_config, training_args, 0.0)
    results = evaluate_splits(trainer, data, training_args.output_dir, "encoder-fusion-ft")
    assert set(results) == {"dev"} and 0.0 <= results["dev"]["weighted_f1"] <= 1.0
