"""Encoder-fusion baseline: text with dialogue context (+ audio, visual, speaker) -> fusion -> emotion.

Configured by a flat YAML (`erc_llm.baseline.config`), trained with the HF Trainer, writing the same
`metrics.json` / `predictions.jsonl` run directories as the LLM recipes. Audio and visual features come from a
feature store (`erc_llm.baseline.features`) or are extracted from raw media with a cache.
"""

from __future__ import annotations

import importlib

# Exports load on first use (PEP 562), so `erc-llm --help` does not import torch and transformers.
_EXPORTS = {
    "BaselineConfigError": "erc_llm.baseline.config",
    "BaselineData": "erc_llm.baseline.data",
    "BaselineDataConfig": "erc_llm.baseline.config",
    "BaselineModelConfig": "erc_llm.baseline.config",
    "BaselineTrainingArguments": "erc_llm.baseline.config",
    "DiceLoss": "erc_llm.baseline.losses",
    "FeatureStore": "erc_llm.baseline.features",
    "FeatureStoreError": "erc_llm.baseline.features",
    "FocalLoss": "erc_llm.baseline.losses",
    "FusionClassifier": "erc_llm.baseline.model",
    "FusionCollator": "erc_llm.baseline.data",
    "FusionDataset": "erc_llm.baseline.data",
    "Stopwatch": "erc_llm.baseline.train",
    "build_loss": "erc_llm.baseline.losses",
    "build_model": "erc_llm.baseline.train",
    "build_trainer": "erc_llm.baseline.train",
    "evaluate_splits": "erc_llm.baseline.train",
    "inverse_frequency_weights": "erc_llm.baseline.losses",
    "load_baseline_yaml": "erc_llm.baseline.config",
    "parse_baseline_config": "erc_llm.baseline.config",
    "prepare_data": "erc_llm.baseline.data",
    "run_extra": "erc_llm.baseline.train",
    "save_run": "erc_llm.baseline.train",
    "train_and_evaluate": "erc_llm.baseline.train",
    "write_feature_store": "erc_llm.baseline.features",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import an exported name from its module on first access."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
