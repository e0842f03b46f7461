"""Feature extractors with a cache in the feature-store format, so each extraction runs once.

* `AudioEncoder`: a wav2vec2-style model (`transformers.AutoModel`, e.g. `Wav2Vec2Model`); the last hidden
  states are pooled over time as mean and max, concatenated (2 x hidden size).
* `FrameEncoder`: an image model (`ViTModel`, `CLIPVisionModel`, ...) over frames sampled uniformly from the
  utterance's video; per-frame pooled outputs are pooled over frames as mean and max (2 x hidden size).
* `TextEncoder`: a frozen text encoder over context windows (`erc_llm.baseline.text`), pooled as configured.

`cached_media_features` and `cached_text_features` write into `<feature_cache_dir>/<modality>-<fingerprint>/`,
a normal feature store whose fingerprint covers the encoder and its settings (for text also the exact inputs);
media vectors are keyed by the media file, text vectors by utterance; entries already there are not recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from erc_llm.baseline.features import FeatureStore, canonical_key
from erc_llm.baseline.media import MediaError, load_audio, load_frames
from erc_llm.baseline.text import TextWindow
from erc_llm.data.schema import Utterance
from erc_llm.paths import cache_root

logger = logging.getLogger(__name__)

MEDIA_KEYS = {"audio": ("audio",), "visual": ("video", "frames", "image")}


def default_feature_cache_dir() -> Path:
    """<cache>/features ($ERC_LLM_CACHE or ~/.cache/erc_llm)."""
    return cache_root() / "features"


def _weights_stamp(model_dir: str) -> dict[str, Any]:
    """Size and mtime of the weight files of a local model folder (changes when the weights change)."""
    stamp: dict[str, Any] = {}
    folder = Path(model_dir)
    if folder.is_dir():
        for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            info = path.stat()
            stamp[path.name] = [info.st_size, int(info.st_mtime)]
    return stamp


def fingerprint(settings: dict[str, Any]) -> str:
    """Short stable hash of a JSON-serialisable settings dict."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_encoder(name_or_path: str):
    """An `AutoModel` in eval mode from a hub id, offline alias or local folder (resolved offline-first)."""
    from transformers import AutoModel

    from erc_llm.offline_models import resolve_model

    local = resolve_model(name_or_path)
    model = AutoModel.from_pretrained(local)
    model.eval()
    return model, local


def mean_max_pool(hidden: torch.Tensor) -> torch.Tensor:
    """Concatenate mean and max over the first axis: [T, H] -> [2H]."""
    return torch.cat([hidden.mean(dim=0), hidden.max(dim=0).values])


class AudioEncoder:
    """Wav2vec2-style audio encoder: waveform -> mean+max pooled last hidden states."""

    def __init__(self, name_or_path: str, sampling_rate: int = 16000, max_seconds: float = 15.0,
                 normalize: bool = True) -> None:
        self.model, self.model_dir = load_encoder(name_or_path)
        self.name = name_or_path
        self.sampling_rate = sampling_rate
        self.max_seconds = max_seconds
        self.normalize = normalize
        self.dim = 2 * int(self.model.config.hidden_size)
        # The shortest input the convolutional feature encoder turns into at least one frame.
        kernels = getattr(self.model.config, "conv_kernel", None) or [400]
        strides = getattr(self.model.config, "conv_stride", None) or [320]
        minimum = 1
        for kernel, stride in zip(reversed(kernels), reversed(strides)):
            minimum = (minimum - 1) * stride + kernel
        self.min_samples = minimum

    def settings(self) -> dict[str, Any]:
        """What determines the vectors (for the cache fingerprint)."""
        return {"kind": "audio", "encoder": self.name, "weights": _weights_stamp(self.model_dir),
                "sampling_rate": self.sampling_rate, "max_seconds": self.max_seconds, "normalize": self.normalize,
                "pooling": "mean+max", "dim": self.dim}

    @torch.no_grad()
    def __call__(self, path: str | Path) -> np.ndarray:
        """Feature vector of one audio (or video) file."""
        waveform = load_audio(path, self.sampling_rate, self.max_seconds)
        if waveform.size < self.min_samples:
            waveform = np.pad(waveform, (0, self.min_samples - waveform.size))
        if self.normalize:
            waveform = (waveform - waveform.mean()) / np.sqrt(waveform.var() + 1e-7)
        hidden = self.model(torch.from_numpy(waveform.astype(np.float32))[None]).last_hidden_state[0]
        return mean_max_pool(hidden).numpy()


class FrameEncoder:
    """Image encoder over frames sampled from a video: per-frame embedding, mean+max pooled over frames."""

    def __init__(self, name_or_path: str, frames: int = 4, image_size: int | None = None,
                 image_mean: Sequence[float] = (0.5, 0.5, 0.5), image_std: Sequence[float] = (0.5, 0.5, 0.5)) -> None:
        model, self.model_dir = load_encoder(name_or_path)
        self.model = getattr(model, "vision_model", model)  # a full CLIP model: use its vision tower
        config = getattr(self.model.config, "vision_config", self.model.config)
        self.name = name_or_path
        self.frames = frames
        self.image_size = int(image_size or getattr(config, "image_size", 224))
        self.image_mean = np.asarray(image_mean, dtype=np.float32)
        self.image_std = np.asarray(image_std, dtype=np.float32)
        self.dim = 2 * int(config.hidden_size)

    def settings(self) -> dict[str, Any]:
        """What determines the vectors (for the cache fingerprint)."""
        return {"kind": "visual", "encoder": self.name, "weights": _weights_stamp(self.model_dir),
                "frames": self.frames, "image_size": self.image_size, "mean": self.image_mean.tolist(),
                "std": self.image_std.tolist(), "pooling": "frame embedding, mean+max over frames", "dim": self.dim}

    @torch.no_grad()
    def __call__(self, path: str | Path) -> np.ndarray:
        """Feature vector of one video, frame folder or image."""
        frames = load_frames(path, self.frames, self.image_size).astype(np.float32) / 255.0
        pixels = (frames - self.image_mean) / self.image_std
        pixel_values = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
        outputs = self.model(pixel_values=pixel_values)
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is None:
            pooled = outputs.last_hidden_state[:, 0]
        return mean_max_pool(pooled).numpy()


def media_path(utterance: Utterance, modality: str, media_dir: str | os.PathLike[str] | None) -> Path | None:
    """The raw media file of an utterance for a modality (relative paths resolved against `media_dir`)."""
    for key in MEDIA_KEYS[modality]:
        value = utterance.media.get(key)
        if value:
            path = Path(value).expanduser()
            if not path.is_absolute() and media_dir is not None:
                path = Path(media_dir) / path
            return path
    return None


def media_cache_key(path: Path) -> str:
    """Cache key of a media file: hash of its absolute path, size and modification time."""
    info = path.stat()
    identity = f"{path.resolve()}|{info.st_size}|{info.st_mtime_ns}"
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def cached_media_features(
    modality: str,
    encoder: AudioEncoder | FrameEncoder,
    utterances: Sequence[Utterance],
    cache_dir: str | os.PathLike[str],
    media_dir: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(features [N, dim], present mask [N], newly computed) for utterances, via the extraction cache.

    The cache is a feature store in `<cache_dir>/<modality>-<fingerprint of the encoder settings>/` keyed by
    media file (path, size, mtime), so a file is encoded once whichever corpus or split refers to it.
    Utterances without a media path, or whose file is missing or unreadable, are marked absent.
    """
    settings = encoder.settings()
    store_dir = Path(cache_dir) / f"{modality}-{fingerprint(settings)}"
    store = FeatureStore.open(store_dir, create=True)
    vectors = dict(store.vectors(modality)) if store.has(modality) else {}
    features = np.zeros((len(utterances), encoder.dim), dtype=np.float32)
    present = np.zeros(len(utterances), dtype=bool)
    computed = 0
    for row, utterance in enumerate(utterances):
        path = media_path(utterance, modality, media_dir)
        if path is None:
            continue
        if not path.exists():
            logger.warning("%s features: %s not found (utterance %s left without them)", modality, path,
                           canonical_key(utterance))
            continue
        key = media_cache_key(path)
        if key not in vectors:
            try:
                vectors[key] = encoder(path)
            except MediaError as exc:
                logger.warning("%s features: %s (utterance %s left without them)", modality, exc,
                               canonical_key(utterance))
                continue
            computed += 1
        features[row] = vectors[key]
        present[row] = True
    if computed or not store.has(modality):
        store.write(modality, vectors, source=f"{encoder.name} via erc_llm extraction (keys: media file hashes)",
                    details=settings)
    logger.info("%s features: %d computed, %d from cache %s", modality, computed, int(present.sum()) - computed,
                store_dir)
    return features, present, computed


def pool_hidden_states(
    hidden: torch.Tensor, attention_mask: torch.Tensor, target_mask: torch.Tensor | None, pooling: str
) -> torch.Tensor:
    """Pool token states [B, T, H] to [B, H] (or [B, 2H] for target+mean) as `mean`, `cls`, `target`."""

    def masked_mean(mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-6)

    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        return masked_mean(attention_mask)
    if target_mask is None:
        raise ValueError(f"text_pooling {pooling!r} needs a target mask")
    if pooling == "target":
        return masked_mean(target_mask)
    if pooling == "target+mean":
        return torch.cat([masked_mean(target_mask), masked_mean(attention_mask)], dim=-1)
    raise ValueError(f"unknown text pooling {pooling!r}")


def pad_windows(windows: Sequence[TextWindow], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad windows into input_ids, attention_mask and target_mask tensors."""
    width = max(len(w) for w in windows)
    input_ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(windows), width), dtype=torch.long)
    target_mask = torch.zeros((len(windows), width), dtype=torch.long)
    for row, window in enumerate(windows):
        length = len(window)
        input_ids[row, :length] = torch.tensor(window.input_ids)
        attention_mask[row, :length] = 1
        target_mask[row, :length] = torch.tensor(window.target_mask)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "target_mask": target_mask}


class TextEncoder:
    """A frozen text encoder that embeds context windows (pooled as configured)."""

    def __init__(self, model, model_dir: str, name: str, pooling: str, pad_id: int, batch_size: int = 64) -> None:
        self.model = model
        self.model_dir = model_dir
        self.name = name
        self.pooling = pooling
        self.pad_id = pad_id
        self.batch_size = batch_size
        multiplier = 2 if pooling == "target+mean" else 1
        self.dim = multiplier * int(model.config.hidden_size)

    def settings(self) -> dict[str, Any]:
        """What determines the vectors (for the cache fingerprint)."""
        return {"kind": "text", "encoder": self.name, "weights": _weights_stamp(self.model_dir),
                "pooling": self.pooling, "dim": self.dim}

    @torch.no_grad()
    def embed(self, windows: Sequence[TextWindow], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embeddings [N, dim] of windows (batched by length for speed, returned in input order)."""
        self.model.eval()
        order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
        output = np.zeros((len(windows), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            batch_rows = order[start : start + self.batch_size]
            batch = pad_windows([windows[i] for i in batch_rows], self.pad_id)
            hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            pooled = pool_hidden_states(hidden, batch["attention_mask"], batch["target_mask"], self.pooling)
            output[batch_rows] = pooled.float().numpy()
            if progress is not None:
                progress(len(batch_rows))
            done = start + len(batch_rows)
            if done == len(order) or done // self.batch_size % 20 == 0:
                logger.info("text features: %d/%d windows embedded", done, len(order))
        return output


def cached_text_features(
    encoder: TextEncoder,
    utterances: Sequence[Utterance],
    windows: Sequence[TextWindow],
    cache_dir: str | os.PathLike[str],
) -> tuple[np.ndarray, int]:
    """Embeddings of windows, read from or written to a cache store keyed by the exact inputs; (matrix, computed)."""
    digest = hashlib.sha256()
    for utterance, window in zip(utterances, windows):
        digest.update(canonical_key(utterance).encode())
        digest.update(np.asarray(window.input_ids, dtype=np.int64).tobytes())
        digest.update(np.asarray(window.target_mask, dtype=np.int8).tobytes())
    settings = {**encoder.settings(), "inputs": digest.hexdigest()}
    store_dir = Path(cache_dir) / f"text-{fingerprint(settings)}"
    store = FeatureStore.open(store_dir, create=True)
    keys = [canonical_key(u) for u in utterances]
    if store.has("text"):
        vectors = store.vectors("text")
        if all(key in vectors for key in keys):
            logger.info("text features: %d read from cache %s", len(keys), store_dir)
            return np.stack([vectors[key] for key in keys]).astype(np.float32), 0
    logger.info("text features: embedding %d context windows with %s", len(windows), encoder.name)
    matrix = encoder.embed(windows)
    store.write("text", dict(zip(keys, matrix)), source=f"{encoder.name} (frozen) via erc_llm", details=settings)
    return matrix, len(keys)
