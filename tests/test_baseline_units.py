"""Encoder-fusion baseline, fast parts: recipe YAMLs, config validation, losses, feature store, fusion masking."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from erc_llm.baseline.config import (
    BaselineConfigError,
    BaselineDataConfig,
    BaselineModelConfig,
    load_baseline_yaml,
    parse_baseline_config,
    resolved_config,
    write_resolved_config,
)
from erc_llm.baseline.features import FeatureStore, FeatureStoreError, candidate_keys, write_feature_store
from erc_llm.baseline.losses import (
    IGNORE_INDEX,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    build_loss,
    inverse_frequency_weights,
)
from erc_llm.baseline.model import FusionClassifier
from erc_llm.data import Utterance

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE_DIR = REPO_ROOT / "recipes" / "encoder-fusion"
RECIPES = sorted(RECIPE_DIR.glob("*.yaml"))


# ---- recipes and config ---------------------------------------------------------------------------------
def test_recipe_folder_has_variants():
    names = {p.stem for p in RECIPES}
    assert {"meld_text_context", "emorynlp_text_context", "meld_multimodal_mha"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_parses_strictly(recipe: Path):
    data_config, model_config, training_args = load_baseline_yaml(recipe)
    assert data_config.corpus
    assert training_args.metric_for_best_model == "weighted_f1"
    assert training_args.load_best_model_at_end
    assert Path(training_args.output_dir).parts[0] == "runs"  # git-ignored run folders
    assert model_config.fusion in ("concat", "mha")


def test_unknown_yaml_key_is_an_error(tmp_path: Path):
    config = tmp_path / "bad.yaml"
    config.write_text((RECIPE_DIR / "meld_text_context.yaml").read_text() + "\nprojection_dimm: 3\n")
    with pytest.raises(ValueError, match="projection_dimm"):
        parse_baseline_config(["--config", str(config)])


def test_cli_overrides_yaml():
    _, model_config, training_args = parse_baseline_config(
        ["--config", str(RECIPE_DIR / "meld_text_context.yaml"), "--loss", "focal", "--num_train_epochs", "2"]
    )
    assert model_config.loss == "focal" and training_args.num_train_epochs == 2


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [({"audio_source": "wav"}, "audio_source"), ({"visual_source": "store"}, "feature_store"),
     ({"context_before": -1}, "context_before"), ({"target_line_template": "{who}"}, "target_line_template"),
     ({"eval_split": "train"}, "eval_split")],
)
def test_data_config_validation(kwargs, field_name):
    with pytest.raises(BaselineConfigError, match=field_name):
        BaselineDataConfig(**kwargs)


def test_model_config_validation():
    with pytest.raises(BaselineConfigError, match="loss"):
        BaselineModelConfig(loss="hinge")
    with pytest.raises(BaselineConfigError, match="fusion"):
        BaselineModelConfig(fusion="sum")
    model = BaselineModelConfig(fusion="mha", text_projection_dim=64, audio_projection_dim=32)
    with pytest.raises(BaselineConfigError, match="equal projection sizes"):
        model.check_against(BaselineDataConfig(audio_source="store", feature_store="x"))
    with pytest.raises(BaselineConfigError, match="audio_encoder"):
        BaselineModelConfig().check_against(BaselineDataConfig(audio_source="media"))


def test_resolved_config_round_trips(tmp_path: Path):
    configs = load_baseline_yaml(RECIPE_DIR / "meld_multimodal_mha.yaml")
    path = write_resolved_config(tmp_path / "config.yaml", resolved_config(*configs))
    again = parse_baseline_config(["--config", str(path)])
    assert again[0] == configs[0] and again[1] == configs[1]
    assert again[2].learning_rate == configs[2].learning_rate and again[2].seed == configs[2].seed


# ---- losses ---------------------------------------------------------------------------------------------
def test_inverse_frequency_weights_by_hand():
    weights = inverse_frequency_weights([0, 0, 0, 1, IGNORE_INDEX], num_classes=3)
    # N / (C * n_c): 4 / (3 * 3), 4 / (3 * 1); an unseen class gets the largest seen weight.
    assert torch.allclose(weights, torch.tensor([4 / 9, 4 / 3, 4 / 3]))


def test_weighted_ce_matches_torch():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 3, IGNORE_INDEX])
    loss = build_loss("weighted_ce", 4, train_label_ids=[0, 0, 1, 2, 3, 3, 3, 3])
    weights = inverse_frequency_weights([0, 0, 1, 2, 3, 3, 3, 3], 4)
    expected = F.cross_entropy(logits, labels, weight=weights, ignore_index=IGNORE_INDEX)
    assert torch.allclose(loss(logits, labels), expected)
    assert torch.allclose(CrossEntropyLoss()(logits, labels), F.cross_entropy(logits, labels))


def test_focal_reduces_to_known_values():
    torch.manual_seed(1)
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    assert torch.allclose(FocalLoss(gamma=0.0)(logits, labels), F.cross_entropy(logits, labels), atol=1e-6)
    # One example with p_t = 0.8: -(1 - 0.8)^2 * log(0.8).
    two_class = torch.tensor([[math.log(0.8), math.log(0.2)]])
    expected = -(0.2**2) * math.log(0.8)
    assert FocalLoss(gamma=2.0)(two_class, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-5)


def test_dice_by_hand():
    confident = torch.tensor([[20.0, -20.0], [-20.0, 20.0]])
    assert DiceLoss(smooth=0.0)(confident, torch.tensor([0, 1])).item() == pytest.approx(0.0, abs=1e-6)
    # Uniform predictions over 2 classes, labels [0, 0]: class 0 dice = 2*1/(1+2) = 2/3; class 1 = 0/(1+0) = 0.
    uniform = torch.zeros(2, 2)
    assert DiceLoss(smooth=0.0)(uniform, torch.tensor([0, 0])).item() == pytest.approx(1 - (2 / 3 + 0) / 2)


def test_losses_ignore_unlabelled_rows_and_backpropagate():
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, IGNORE_INDEX, 2, IGNORE_INDEX])
    for name in ("ce", "weighted_ce", "dice", "focal"):
        loss = build_loss(name, 3, train_label_ids=[0, 1, 2])(logits, labels)
        loss.backward()
        assert torch.isfinite(loss)
        assert logits.grad[1].abs().sum() == 0 and logits.grad[0].abs().sum() > 0
        logits.grad = None


# ---- feature store --------------------------------------------------------------------------------------
def _utterance(dialogue: str, index: int, utterance_id: str | None = None, media: dict | None = None) -> Utterance:
    return Utterance(dialogue_id=dialogue, index=index, speakers=("Ann",), text="hi", utterance_id=utterance_id,
                     media=media or {})


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_feature_store_round_trip_and_key_order(tmp_path: Path, fmt: str):
    vectors = {"meld/test/0/0": np.ones(4), "test/dia0_utt1": np.full(4, 2.0), "s01_u5": np.full(4, 3.0),
               "custom-key": np.full(4, 4.0)}
    write_feature_store(tmp_path, "audio", vectors, source="unit test", fmt=fmt)
    store = FeatureStore.open(tmp_path)
    assert store.dim("audio") == 4 and store.modalities["audio"].source == "unit test"
    rows = [
        _utterance("meld/test/0", 0, "dia0_utt0"),  # canonical key
        _utterance("meld/test/0", 1, "dia0_utt1"),  # split/utterance_id
        _utterance("emorynlp/s01", 0, "s01_u5"),  # utterance_id alone
        _utterance("x", 0, media={"audio_features": "custom-key"}),  # explicit key
        _utterance("meld/test/0", 7, "dia0_utt7"),  # missing
    ]
    features, present = store.matrix("audio", rows, split="test")
    assert present.tolist() == [True, True, True, True, False]
    assert features[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 0.0]
    assert candidate_keys(rows[3], "audio", "test")[0] == "custom-key"


def test_feature_store_errors(tmp_path: Path):
    with pytest.raises(FeatureStoreError, match="no feature store"):
        FeatureStore.open(tmp_path / "absent")
    with pytest.raises(FeatureStoreError, match="different sizes"):
        write_feature_store(tmp_path, "audio", {"a": np.ones(3), "b": np.ones(4)})
    write_feature_store(tmp_path, "audio", {"a": np.ones(3)})
    with pytest.raises(FeatureStoreError, match="no 'visual' features"):
        FeatureStore.open(tmp_path).dim("visual")


# ---- fusion model ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", ["concat", "mha"])
def test_missing_modalities_are_masked(fusion: str):
    torch.manual_seed(0)
    config = BaselineModelConfig(fusion=fusion, text_projection_dim=16, audio_projection_dim=16,
                                 visual_projection_dim=16, speaker_embedding_dim=16, fusion_heads=2,
                                 head_hidden_dim=8, dropout=0.0)
    model = FusionClassifier(config, num_labels=3, input_dims={"text": 6, "audio": 5, "visual": 4},
                             loss=build_loss("ce", 3), num_speakers=4).eval()
    with torch.no_grad():
        for parameter in model.missing.values():
            parameter.normal_()
    text, audio, visual = torch.randn(3, 6), torch.randn(3, 5), torch.randn(3, 4)
    audio_mask, visual_mask = torch.tensor([True, False, True]), torch.tensor([False, False, True])
    speakers = torch.tensor([0, 1, 3])
    output = model(text_features=text, audio_features=audio, audio_mask=audio_mask, visual_features=visual,
                   visual_mask=visual_mask, speaker_ids=speakers, labels=torch.tensor([0, 1, 2]))
    assert output.logits.shape == (3, 3) and torch.isfinite(output.loss)
    # Garbage in the masked positions changes nothing; the present ones do matter.
    noisy_audio, noisy_visual = audio.clone(), visual.clone()
    noisy_audio[1] += 100.0
    noisy_visual[:2] += 100.0
    again = model(text_features=text, audio_features=noisy_audio, audio_mask=audio_mask,
                  visual_features=noisy_visual, visual_mask=visual_mask, speaker_ids=speakers).logits
    assert torch.allclose(again, output.logits, atol=1e-5)
    changed = audio.clone()
    changed[0] += 1.0
    moved = model(text_features=text, audio_features=changed, audio_mask=audio_mask, visual_features=visual,
                  visual_mask=visual_mask, speaker_ids=speakers).logits
    assert not torch.allclose(moved[0], output.logits[0])
    # A modality absent for the whole batch (no tensor at all) works too.
    assert model(text_features=text).logits.shape == (3, 3)


def test_cli_features_info(tmp_path: Path, capsys):
    import argparse
    import json

    from erc_llm.baseline.cli import register_cli

    write_feature_store(tmp_path, "audio", {"a": np.ones(3), "b": np.zeros(3)}, source="unit")
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["baseline", "features", "info", str(tmp_path)])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["audio"] == {"file": "audio.safetensors", "dim": 3, "source": "unit",
                                                             "details": {}, "entries": 2}
    train = parser.parse_args(["baseline", "train", "--config", "x.yaml", "--", "--loss", "focal"])
    assert train.config == "x.yaml" and train.overrides[-2:] == ["--loss", "focal"]
