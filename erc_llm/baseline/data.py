"""From loaded dialogues to model inputs: labels, text windows or cached text vectors, audio/visual features
with presence masks, speaker ids; a torch Dataset and a collator for the HF Trainer."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from erc_llm.baseline.config import BaselineConfigError, BaselineDataConfig, BaselineModelConfig
from erc_llm.baseline.extractors import (
    AudioEncoder,
    FrameEncoder,
    TextEncoder,
    cached_media_features,
    cached_text_features,
    default_feature_cache_dir,
    pad_windows,
)
from erc_llm.baseline.features import FeatureStore
from erc_llm.baseline.losses import IGNORE_INDEX
from erc_llm.baseline.text import ContextWindowBuilder, TextWindow
from erc_llm.data import UNKNOWN_ID, LabelSet, LoadedSplit, SpeakerRegistry, Utterance
from erc_llm.data.sources import DataSourceError, resolve_source, run_corpus_name

logger = logging.getLogger(__name__)

ROLES = ("train", "eval", "test")


def attach_media_paths(utterances: Sequence[Utterance], template: str, split: str) -> int:
    """Fill `audio` and `video` media paths from a template for utterances that have none; return how many."""
    filled = 0
    for utterance in utterances:
        if utterance.media.get("audio") or utterance.media.get("video"):
            continue
        path = template.format(split=split, utterance_id=utterance.utterance_id or utterance.index,
                               dialogue_id=utterance.dialogue_id, index=utterance.index)
        utterance.media.update({"audio": path, "video": path})
        filled += 1
    return filled


@dataclass
class SplitInputs:
    """Model inputs of one split, row-aligned with `utterances`."""

    role: str
    split: str
    utterances: list[Utterance]
    label_ids: np.ndarray
    windows: list[TextWindow] | None = None
    text_features: np.ndarray | None = None
    optional_features: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    speaker_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.utterances)

    def coverage(self) -> dict[str, float]:
        """Share of utterances that have each optional modality."""
        return {m: float(mask.mean()) if len(mask) else 0.0 for m, (_, mask) in self.optional_features.items()}


@dataclass
class BaselineData:
    """Everything the model and trainer need from the data side."""

    corpus: str
    label_set: LabelSet
    splits: dict[str, SplitInputs]
    input_dims: dict[str, int]
    speaker_vocab: list[str]
    tokenizer: Any
    text_encoder: torch.nn.Module | None
    text_encoder_dir: str

    @property
    def train_label_ids(self) -> np.ndarray:
        """Label ids of the training split."""
        return self.splits["train"].label_ids


def _load_role_split(config: BaselineDataConfig, role: str, label_set: LabelSet | None = None) -> LoadedSplit | None:
    """The dialogues of the train, eval or test role (sliced as configured), from the corpus, file or folder
    `config.corpus` names (`erc_llm.data.sources`) or the role's own `eval_file` / `test_file`."""
    split = {"train": config.train_split, "eval": config.eval_split, "test": config.test_split}[role]
    if split is None:
        return None
    own_file = {"eval": config.eval_file, "test": config.test_file}.get(role)
    source = resolve_source(own_file or config.corpus, labels=None if own_file else config.labels,
                            data_dir=config.data_dir)
    if not (own_file or role == "train" or source.has_split(split)):
        if role == "test":
            return None
        raise BaselineConfigError(f"{config.corpus} has no {split!r} split for {role}: set {role}_file, or give a "
                                  "folder of split files (train/dev/test)")
    loaded = source.load(split, label_set=label_set)
    limit = config.max_train_dialogues if role == "train" else config.max_eval_dialogues
    if limit is not None:
        loaded.dialogues = loaded.dialogues[:limit]
    return loaded


def corpus_label_set(config: BaselineDataConfig, train: LoadedSplit) -> LabelSet:
    """The label set the corpus or data declares, else the one the training labels fit."""
    try:
        return resolve_source(config.corpus, labels=config.labels, data_dir=config.data_dir).label_set_for(train)
    except DataSourceError as exc:
        raise BaselineConfigError(str(exc)) from None


def build_speaker_vocab(registry: SpeakerRegistry, train_utterances: Sequence[Utterance], min_count: int) -> list[str]:
    """Speaker ids with an embedding: `unknown` first, then every training speaker seen at least `min_count` times."""
    counts = Counter(registry.primary_id(u) for u in train_utterances)
    kept = sorted(s for s, n in counts.items() if n >= min_count and s != UNKNOWN_ID and not s.startswith("role:"))
    return [UNKNOWN_ID, *kept]


def load_text_encoder(name: str):
    """(tokenizer, AutoModel, local folder) of a text encoder, resolved offline-first."""
    from transformers import AutoModel, AutoTokenizer

    from erc_llm.offline_models import resolve_model

    local = resolve_model(name)
    return AutoTokenizer.from_pretrained(local), AutoModel.from_pretrained(local), local


def prepare_data(data_config: BaselineDataConfig, model_config: BaselineModelConfig) -> BaselineData:
    """Load the splits and turn them into model inputs (extracting or reading cached features as configured)."""
    train = _load_role_split(data_config, "train")
    label_set = corpus_label_set(data_config, train)
    loaded = {"train": train, **{role: _load_role_split(data_config, role, label_set) for role in ROLES[1:]}}
    cache_dir = Path(data_config.feature_cache_dir or default_feature_cache_dir())

    tokenizer, encoder_model, encoder_dir = load_text_encoder(model_config.text_encoder)
    builder = ContextWindowBuilder(
        tokenizer, data_config.context_before, data_config.context_after, data_config.context_line_template,
        data_config.target_line_template, data_config.max_length,
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    frozen_text = TextEncoder(encoder_model, encoder_dir, model_config.text_encoder, model_config.text_pooling,
                              pad_id, model_config.text_embedding_batch_size)

    utterance_builder = utterance_text = None
    if model_config.add_utterance_embedding:
        utterance_builder = ContextWindowBuilder(tokenizer, 0, 0, data_config.context_line_template,
                                                 data_config.context_line_template, data_config.max_length)
        utterance_text = TextEncoder(encoder_model, encoder_dir, model_config.text_encoder, "mean", pad_id,
                                     model_config.text_embedding_batch_size)

    registry = None
    speaker_vocab: list[str] = []
    if model_config.use_speaker_embedding:
        registry = SpeakerRegistry.build([train.dialogues])
        speaker_vocab = build_speaker_vocab(registry, list(train.utterances()), model_config.min_speaker_count)
    speaker_index = {speaker: i for i, speaker in enumerate(speaker_vocab)}

    store = FeatureStore.open(data_config.feature_store) if data_config.feature_store else None
    media_encoders: dict[str, AudioEncoder | FrameEncoder] = {}
    if data_config.audio_source == "media":
        media_encoders["audio"] = AudioEncoder(model_config.audio_encoder, model_config.audio_sampling_rate,
                                               model_config.audio_max_seconds, model_config.audio_normalize)
    if data_config.visual_source == "media":
        media_encoders["visual"] = FrameEncoder(model_config.visual_encoder, model_config.visual_frames,
                                                model_config.visual_image_size, model_config.visual_image_mean,
                                                model_config.visual_image_std)

    input_dims = {"text": frozen_text.dim + (utterance_text.dim if utterance_text is not None else 0)}
    sources = {"audio": data_config.audio_source, "visual": data_config.visual_source}
    for modality, source in sources.items():
        if source == "store":
            input_dims[modality] = store.dim(modality)
        elif source == "media":
            input_dims[modality] = media_encoders[modality].dim

    splits: dict[str, SplitInputs] = {}
    for role, split in loaded.items():
        if split is None:
            continue
        utterances = list(split.utterances())
        if data_config.media_path_template and "media" in sources.values():
            attach_media_paths(utterances, data_config.media_path_template, split.split)
        label_ids = np.asarray(
            [label_set.index(u.label) if u.label is not None else IGNORE_INDEX for u in utterances], dtype=np.int64
        )
        windows = [w for dialogue in split.dialogues for w in builder.dialogue_windows(dialogue)]
        inputs = SplitInputs(role=role, split=split.split, utterances=utterances, label_ids=label_ids)
        if model_config.freeze_text_encoder:
            inputs.text_features, _ = cached_text_features(frozen_text, utterances, windows, cache_dir)
            if utterance_text is not None:
                alone = [w for dialogue in split.dialogues for w in utterance_builder.dialogue_windows(dialogue)]
                utterance_vectors, _ = cached_text_features(utterance_text, utterances, alone, cache_dir)
                inputs.text_features = np.hstack([inputs.text_features, utterance_vectors])
        else:
            inputs.windows = windows
        for modality, source in sources.items():
            if source == "store":
                inputs.optional_features[modality] = store.matrix(modality, utterances, split.split)
            elif source == "media":
                features, present, _ = cached_media_features(modality, media_encoders[modality], utterances,
                                                             cache_dir, data_config.media_dir)
                inputs.optional_features[modality] = (features, present)
        if registry is not None:
            inputs.speaker_ids = np.asarray(
                [speaker_index.get(registry.primary_id(u), 0) for u in utterances], dtype=np.int64
            )
        for modality, share in inputs.coverage().items():
            level = logging.WARNING if share == 0 else logging.INFO
            logger.log(level, "%s split: %s features for %.1f%% of %d utterances", role, modality, 100 * share,
                       len(utterances))
        splits[role] = inputs

    return BaselineData(
        corpus=run_corpus_name(data_config.corpus, data_config.data_dir), label_set=label_set, splits=splits, input_dims=input_dims,
        speaker_vocab=speaker_vocab, tokenizer=tokenizer,
        text_encoder=None if model_config.freeze_text_encoder else encoder_model, text_encoder_dir=encoder_dir,
    )


class FusionDataset(torch.utils.data.Dataset):
    """One item per utterance: the inputs the `FusionClassifier` takes, as NumPy values."""

    def __init__(self, inputs: SplitInputs) -> None:
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        inputs = self.inputs
        item: dict[str, Any] = {"labels": int(inputs.label_ids[index])}
        if inputs.windows is not None:
            item["window"] = inputs.windows[index]
        if inputs.text_features is not None:
            item["text_features"] = inputs.text_features[index]
        for modality, (features, mask) in inputs.optional_features.items():
            item[f"{modality}_features"] = features[index]
            item[f"{modality}_mask"] = bool(mask[index])
        if inputs.speaker_ids is not None:
            item["speaker_ids"] = int(inputs.speaker_ids[index])
        return item


class FusionCollator:
    """Stacks dataset items into the tensors `FusionClassifier.forward` takes (text windows right-padded)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {"labels": torch.tensor([item["labels"] for item in items], dtype=torch.long)}
        first = items[0]
        if "window" in first:
            batch.update(pad_windows([item["window"] for item in items], self.pad_id))
        for name in first:
            if name in ("labels", "window"):
                continue
            values = [item[name] for item in items]
            if name.endswith("_mask"):
                batch[name] = torch.tensor(values, dtype=torch.bool)
            elif name == "speaker_ids":
                batch[name] = torch.tensor(values, dtype=torch.long)
            else:
                batch[name] = torch.from_numpy(np.stack(values).astype(np.float32))
        return batch
