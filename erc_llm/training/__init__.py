"""SFT of instruct LLMs for ERC: recipe config, label-only class-weighted loss, label-scoring dev selection."""

from erc_llm.training.collator import LabelOnlyCollator
from erc_llm.training.config import (
    ERCDataArguments,
    ERCSFTConfig,
    SFTConfigError,
    load_recipe,
    parse_sft_args,
)
from erc_llm.training.data import build_train_dataset, class_quotas, class_weights, subsample_examples

__all__ = [
    "ERCDataArguments", "ERCSFTConfig", "LabelOnlyCollator", "SFTConfigError",
    "build_train_dataset", "class_quotas", "class_weights", "load_recipe", "parse_sft_args", "subsample_examples",
]
