"""Configuration of the encoder-fusion baseline: three dataclasses read from one flat YAML file.

A recipe YAML holds the fields of `BaselineDataConfig`, `BaselineModelConfig` and `BaselineTrainingArguments`
(a `transformers.TrainingArguments` with baseline defaults) side by side. `parse_baseline_config` reads
`--config x.yaml` plus command-line overrides with TRL's `TrlParser`; a key no dataclass knows is an error.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainingArguments

DEFAULT_TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
MODALITY_SOURCES = ("none", "store", "media")
TEXT_POOLINGS = ("mean", "cls", "target", "target+mean")
FUSIONS = ("concat", "mha")
LOSSES = ("ce", "weighted_ce", "dice", "focal")


class BaselineConfigError(ValueError):
    """A baseline configuration value is invalid (the message names the field)."""


@dataclass
class BaselineDataConfig:
    """Which dialogues to read and how each utterance is turned into model inputs.

    `corpus` is a known corpus name (`meld`, `emorynlp`, `emorynlp-csv`) or a JSONL path (then `train_file`,
    `eval_file`, `test_file` name the split files). The text input of an utterance is its dialogue context:
    the `context_before` previous and `context_after` following utterances, each rendered as
    `context_line_template`, with the target rendered as `target_line_template`. Audio and visual inputs come
    from a feature store (`*_source: store`, see `erc_llm.baseline.features`) or are extracted from raw media
    paths in `Utterance.media` (`*_source: media`) into a cached store.
    """

    corpus: str = field(
        default="meld",
        metadata={"help": "Corpus name (meld, emorynlp, emorynlp-csv), a .csv/.jsonl file or a folder of split files."},
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Corpus folder; default $ERC_LLM_DATA_DIR or ~/.cache/erc_llm/data."}
    )
    labels: str | None = field(
        default=None,
        metadata={"help": "Label set: meld, emorynlp, iemocap, a list a,b,c or a labels file (default: the one the "
                          "data declares, else fitted to the training labels)."},
    )
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str = field(default="dev", metadata={"help": "Split used for early stopping / model selection."})
    test_split: str | None = field(default="test", metadata={"help": "Split scored after training (null: none)."})
    eval_file: str | None = field(default=None, metadata={"help": "JSONL corpus only: file of the eval split."})
    test_file: str | None = field(default=None, metadata={"help": "JSONL corpus only: file of the test split."})
    max_train_dialogues: int | None = field(
        default=None, metadata={"help": "Use only the first N training dialogues (smoke tests, slices)."}
    )
    max_eval_dialogues: int | None = field(
        default=None, metadata={"help": "Use only the first N dialogues of the eval and test splits."}
    )
    context_before: int = field(default=5, metadata={"help": "Previous utterances included as context."})
    context_after: int = field(default=0, metadata={"help": "Following utterances included as context."})
    context_line_template: str = field(
        default="{speaker}: {text}", metadata={"help": "Format of a context line ({speaker}, {text})."}
    )
    target_line_template: str = field(
        default="* {speaker}: {text}", metadata={"help": "Format of the target line ({speaker}, {text})."}
    )
    max_length: int = field(
        default=128, metadata={"help": "Token budget of the text input; context is cut first, the target last."}
    )
    feature_store: str | None = field(
        default=None, metadata={"help": "Feature-store folder (manifest.json + one file per modality)."}
    )
    audio_source: str = field(default="none", metadata={"help": "none | store | media."})
    visual_source: str = field(default="none", metadata={"help": "none | store | media."})
    media_dir: str | None = field(
        default=None, metadata={"help": "Folder that relative media paths in Utterance.media are resolved against."}
    )
    media_path_template: str | None = field(
        default=None,
        metadata={"help": "Media path for utterances without Utterance.media, e.g. "
                          "'{split}/{utterance_id}.mp4' (fields: split, utterance_id, dialogue_id, index); "
                          "relative to media_dir; used for both audio and video."},
    )
    feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where extracted features (media and frozen text) are cached; default <cache>/features."},
    )

    def __post_init__(self) -> None:
        for name in ("audio_source", "visual_source"):
            if getattr(self, name) not in MODALITY_SOURCES:
                raise BaselineConfigError(f"{name} must be one of {MODALITY_SOURCES}, got {getattr(self, name)!r}")
            if getattr(self, name) == "store" and not self.feature_store:
                raise BaselineConfigError(f"{name}: store needs feature_store to name a feature-store folder")
        for name in ("context_before", "context_after"):
            if getattr(self, name) < 0:
                raise BaselineConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_length < 8:
            raise BaselineConfigError(f"max_length must be >= 8, got {self.max_length}")
        for name in ("context_line_template", "target_line_template"):
            template = getattr(self, name)
            try:
                template.format(speaker="S", text="T")
            except (KeyError, IndexError, ValueError) as exc:
                raise BaselineConfigError(f"{name} {template!r} is not a valid template: {exc}") from None
        for name in ("max_train_dialogues", "max_eval_dialogues"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BaselineConfigError(f"{name} must be >= 1 or null, got {value}")
        if self.media_path_template is not None:
            try:
                self.media_path_template.format(split="s", utterance_id="u", dialogue_id="d", index=0)
            except (KeyError, IndexError, ValueError) as exc:
                raise BaselineConfigError(
                    f"media_path_template {self.media_path_template!r} is not a valid template: {exc}"
                ) from None
        if self.eval_split == self.train_split:
            raise BaselineConfigError("eval_split must differ from train_split (early stopping on training data)")

    @property
    def uses_audio(self) -> bool:
        """Whether an audio input is configured."""
        return self.audio_source != "none"

    @property
    def uses_visual(self) -> bool:
        """Whether a visual input is configured."""
        return self.visual_source != "none"


@dataclass
class BaselineModelConfig:
    """The fusion model: a text encoder, optional audio/visual/speaker inputs, a fusion layer, a head, a loss.

    Every input is projected to its `*_projection_dim`; `fusion: concat` concatenates the projections,
    `fusion: mha` runs multi-head self-attention over them as a sequence of modality tokens (then all
    projection sizes must be equal). The fused vector goes through a feed-forward head. With
    `freeze_text_encoder: true` the text encoder runs once per utterance and its pooled outputs are cached in the
    feature store format, so training touches only the fusion layers.
    """

    text_encoder: str = field(
        default=DEFAULT_TEXT_ENCODER, metadata={"help": "Any HF encoder: hub id, offline alias or local folder."}
    )
    freeze_text_encoder: bool = field(
        default=True, metadata={"help": "Frozen: embeddings are computed once and cached. False: fine-tuned."}
    )
    text_pooling: str = field(
        default="target+mean",
        metadata={"help": "mean | cls | target (mean over the target tokens) | target+mean (both, concatenated)."},
    )
    add_utterance_embedding: bool = field(
        default=False,
        metadata={"help": "Frozen encoder only: also embed the target line on its own (mean pooled, no context) and "
                          "concatenate it to the context-window vector."},
    )
    text_encoder_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of a fine-tuned text encoder (default: learning_rate)."}
    )
    text_embedding_batch_size: int = field(default=64, metadata={"help": "Batch size when caching frozen embeddings."})
    text_projection_dim: int = field(default=256, metadata={"help": "Projection size of the text input."})
    use_speaker_embedding: bool = field(
        default=False, metadata={"help": "Add a learned embedding of the speaker's dataset-wide id (SpeakerRegistry)."}
    )
    speaker_embedding_dim: int = field(default=32, metadata={"help": "Size of the speaker-id embedding."})
    min_speaker_count: int = field(
        default=1, metadata={"help": "Speakers with fewer training lines share the `unknown` embedding."}
    )
    audio_encoder: str | None = field(
        default=None, metadata={"help": "Wav2vec2-style encoder for audio_source=media (hub id or folder)."}
    )
    audio_sampling_rate: int = field(default=16000, metadata={"help": "Sampling rate the audio encoder expects."})
    audio_max_seconds: float = field(default=15.0, metadata={"help": "Audio longer than this is cut (compute bound)."})
    audio_normalize: bool = field(default=True, metadata={"help": "Zero-mean unit-variance waveform normalisation."})
    audio_projection_dim: int = field(default=256, metadata={"help": "Projection size of the audio input."})
    visual_encoder: str | None = field(
        default=None, metadata={"help": "Image encoder (ViT, CLIP vision, ...) for visual_source=media."}
    )
    visual_frames: int = field(default=4, metadata={"help": "Frames sampled uniformly per utterance video."})
    visual_image_size: int | None = field(
        default=None, metadata={"help": "Frame size fed to the image encoder (default: the encoder's image_size)."}
    )
    visual_image_mean: list[float] = field(
        default_factory=lambda: [0.5, 0.5, 0.5], metadata={"help": "Per-channel mean for frame normalisation."}
    )
    visual_image_std: list[float] = field(
        default_factory=lambda: [0.5, 0.5, 0.5], metadata={"help": "Per-channel std for frame normalisation."}
    )
    visual_projection_dim: int = field(default=256, metadata={"help": "Projection size of the visual input."})
    fusion: str = field(default="concat", metadata={"help": "concat | mha."})
    fusion_heads: int = field(default=4, metadata={"help": "Attention heads of the mha fusion."})
    head_hidden_dim: int = field(default=256, metadata={"help": "Hidden size of the feed-forward head."})
    dropout: float = field(default=0.2, metadata={"help": "Dropout in projections and head."})
    loss: str = field(default="ce", metadata={"help": "ce | weighted_ce | dice | focal."})
    focal_gamma: float = field(default=2.0, metadata={"help": "Focusing parameter of the focal loss."})
    dice_smooth: float = field(default=1.0, metadata={"help": "Smoothing term of the Dice loss."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing of ce / weighted_ce."})

    def __post_init__(self) -> None:
        if self.text_pooling not in TEXT_POOLINGS:
            raise BaselineConfigError(f"text_pooling must be one of {TEXT_POOLINGS}, got {self.text_pooling!r}")
        if self.fusion not in FUSIONS:
            raise BaselineConfigError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.loss not in LOSSES:
            raise BaselineConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("text_projection_dim", "audio_projection_dim", "visual_projection_dim", "speaker_embedding_dim",
                     "head_hidden_dim", "fusion_heads", "visual_frames", "text_embedding_batch_size",
                     "audio_sampling_rate", "min_speaker_count"):
            if getattr(self, name) < 1:
                raise BaselineConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise BaselineConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.focal_gamma < 0:
            raise BaselineConfigError(f"focal_gamma must be >= 0, got {self.focal_gamma}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise BaselineConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.add_utterance_embedding and not self.freeze_text_encoder:
            raise BaselineConfigError("add_utterance_embedding needs freeze_text_encoder: true")
        if self.audio_max_seconds <= 0:
            raise BaselineConfigError(f"audio_max_seconds must be > 0, got {self.audio_max_seconds}")
        for name in ("visual_image_mean", "visual_image_std"):
            if len(getattr(self, name)) != 3:
                raise BaselineConfigError(f"{name} must hold 3 numbers (RGB), got {getattr(self, name)}")
        if any(value <= 0 for value in self.visual_image_std):
            raise BaselineConfigError(f"visual_image_std must be positive, got {self.visual_image_std}")

    def check_against(self, data: BaselineDataConfig) -> None:
        """Checks that need both configs: encoders for media extraction, equal sizes for mha fusion."""
        if data.audio_source == "media" and not self.audio_encoder:
            raise BaselineConfigError("audio_source: media needs audio_encoder")
        if data.visual_source == "media" and not self.visual_encoder:
            raise BaselineConfigError("visual_source: media needs visual_encoder")
        if self.fusion == "mha":
            sizes = {"text_projection_dim": self.text_projection_dim}
            if data.uses_audio:
                sizes["audio_projection_dim"] = self.audio_projection_dim
            if data.uses_visual:
                sizes["visual_projection_dim"] = self.visual_projection_dim
            if self.use_speaker_embedding:
                sizes["speaker_embedding_dim"] = self.speaker_embedding_dim
            if len(set(sizes.values())) > 1:
                raise BaselineConfigError(f"fusion: mha needs equal projection sizes, got {sizes}")
            if self.text_projection_dim % self.fusion_heads:
                raise BaselineConfigError(
                    f"fusion_heads ({self.fusion_heads}) must divide the projection size ({self.text_projection_dim})"
                )


@dataclass
class BaselineTrainingArguments(TrainingArguments):
    """`transformers.TrainingArguments` with the baseline's defaults: per-epoch evaluation on the dev split,
    the best checkpoint by dev weighted-F1 kept and reloaded, early stopping after `early_stopping_patience`
    evaluations without improvement, no external loggers."""

    output_dir: str = field(default="runs/baseline", metadata={"help": "Run directory (checkpoints, metrics)."})
    system_name: str = field(
        default="encoder-fusion", metadata={"help": "System name written into metrics.json."}
    )
    early_stopping_patience: int = field(
        default=3, metadata={"help": "Evaluations without dev weighted-F1 improvement before stopping (0: off)."}
    )
    num_train_epochs: float = field(default=20.0, metadata={"help": "Maximum training epochs."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the fusion layers and head."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of steps used for linear warm-up."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch size."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Evaluation batch size."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate on the dev split."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save checkpoints (match eval)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (the best is protected)."})
    save_only_model: bool = field(default=True, metadata={"help": "Checkpoints without optimizer state."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Reload the best dev checkpoint."})
    metric_for_best_model: str = field(default="weighted_f1", metadata={"help": "Model-selection metric."})
    greater_is_better: bool = field(default=True, metadata={"help": "Higher metric_for_best_model is better."})
    logging_steps: float = field(default=50, metadata={"help": "Log the training loss every N steps."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep every collated input."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data-loading worker processes."})
    dataloader_pin_memory: bool = field(default=False, metadata={"help": "Pinned memory (GPU only)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.early_stopping_patience < 0:
            raise BaselineConfigError(f"early_stopping_patience must be >= 0, got {self.early_stopping_patience}")


CONFIG_CLASSES = (BaselineDataConfig, BaselineModelConfig, BaselineTrainingArguments)


def parse_baseline_config(
    args: Sequence[str] | None = None,
) -> tuple[BaselineDataConfig, BaselineModelConfig, BaselineTrainingArguments]:
    """Parse `--config x.yaml` plus command-line overrides; unknown YAML keys or flags raise an error."""
    from trl import TrlParser

    parser = TrlParser(CONFIG_CLASSES)
    data_config, model_config, training_args = parser.parse_args_and_config(
        args=list(args) if args is not None else None, fail_with_unknown_args=True
    )
    model_config.check_against(data_config)
    return data_config, model_config, training_args


def load_baseline_yaml(path: str | os.PathLike[str]) -> tuple[BaselineDataConfig, BaselineModelConfig,
                                                              BaselineTrainingArguments]:
    """Parse one recipe YAML file without command-line overrides."""
    return parse_baseline_config(["--config", str(path)])


def _yaml_value(value: Any) -> Any:
    """A config value as plain YAML data (enums and paths as strings)."""
    if isinstance(value, enum.Enum):
        return _yaml_value(value.value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_yaml_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _yaml_value(v) for k, v in value.items()}
    return str(value)


# TrainingArguments fields that __post_init__ fills in from others; writing them back would not parse.
_DERIVED_TRAINING_FIELDS = {"accelerator_config", "debug", "do_eval", "disable_tqdm"}


def _field_default(f: dataclasses.Field) -> Any:
    """The declared default of a dataclass field (without building an instance)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def resolved_config(
    data_config: BaselineDataConfig, model_config: BaselineModelConfig, training_args: BaselineTrainingArguments
) -> dict[str, Any]:
    """Every field of the three configs, as one flat mapping that `--config` accepts back."""
    resolved: dict[str, Any] = {}
    for config in (data_config, model_config):
        resolved.update({f.name: _yaml_value(getattr(config, f.name)) for f in dataclasses.fields(config)})
    stock_defaults = {f.name: _field_default(f) for f in dataclasses.fields(TrainingArguments)}
    overridden = set(BaselineTrainingArguments.__annotations__)
    for f in dataclasses.fields(training_args):
        if not f.init:
            continue
        value = getattr(training_args, f.name)
        if f.name in _DERIVED_TRAINING_FIELDS or (f.name == "report_to" and not value):
            continue
        if f.name in overridden or f.name == "seed" or value != stock_defaults.get(f.name):
            resolved[f.name] = _yaml_value(value)
    return resolved


def write_resolved_config(path: str | os.PathLike[str], config: dict[str, Any]) -> Path:
    """Write the resolved configuration as YAML, atomically."""
    from erc_llm.io import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
