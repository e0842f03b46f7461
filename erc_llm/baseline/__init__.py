"""Encoder-fusion baseline: text with dialogue context (+ audio, visual, speaker) -> fusion -> emotion.

Configured by a flat YAML (`erc_llm.baseline.config`), trained with the HF Trainer, writing the same
`metrics.json` / `predictions.jsonl` run directories as the LLM recipes. Audio and visual features come from a
feature store (`erc_llm.baseline.features`) or are extracted from raw media with a cache.
"""

from erc_llm.baseline.config import (
    BaselineConfigError,
    BaselineDataConfig,
    BaselineModelConfig,
    BaselineTrainingArguments,
    load_baseline_yaml,
    parse_baseline_config,
)
from erc_llm.baseline.data import BaselineData, FusionCollator, FusionDataset, prepare_data
from erc_llm.baseline.features import FeatureStore, FeatureStoreError, write_feature_store
from erc_llm.baseline.losses import DiceLoss, FocalLoss, build_loss, inverse_frequency_weights
from erc_llm.baseline.model import FusionClassifier
from erc_llm.baseline.train import Stopwatch, build_model, build_trainer, evaluate_splits, run_extra, save_run

__all__ = [
    "BaselineConfigError", "BaselineData", "BaselineDataConfig", "BaselineModelConfig", "BaselineTrainingArguments",
    "DiceLoss", "FeatureStore", "FeatureStoreError", "FocalLoss", "FusionClassifier", "FusionCollator",
    "FusionDataset", "Stopwatch", "build_loss", "build_model", "build_trainer", "evaluate_splits",
    "inverse_frequency_weights", "load_baseline_yaml", "parse_baseline_config", "prepare_data", "run_extra",
    "save_run", "write_feature_store",
]
