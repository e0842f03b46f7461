"""Text embeddings for retrieval: sentence-transformers (default all-MiniLM-L6-v2, resolved offline) or a
model-free hashing encoder; both return L2-normalised float32 rows, so inner product = cosine similarity."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from erc_llm.retrieval.config import DEFAULT_EMBEDDING_MODEL

HASHING_PREFIX = "hashing"
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_MODEL_CACHE: dict[tuple[str, int], Any] = {}
_MODEL_LOCK = threading.Lock()


class TextEncoder(Protocol):
    """Anything that turns texts into normalised float32 vectors of a fixed width."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as contiguous float32."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


class SentenceEncoder:
    """A sentence-transformers model (hub id, alias or local dir; resolved offline via `resolve_model`)."""

    def __init__(self, model: str = DEFAULT_EMBEDDING_MODEL, batch_size: int = 64, max_seq_length: int = 128,
                 device: str = "cpu") -> None:
        self.name = model
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.device = device
        self._model = _load_sentence_transformer(model, max_seq_length, device)
        dim = self._model.get_embedding_dimension() if hasattr(self._model, "get_embedding_dimension") else None
        self.dim = int(dim or self._model.get_sentence_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised embeddings, one row per text."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        return normalise_rows(vectors)


def _load_sentence_transformer(model: str, max_seq_length: int, device: str) -> Any:
    """Load a sentence-transformers model once per process (per name and max length)."""
    key = (model, max_seq_length)
    with _MODEL_LOCK:
        if key not in _MODEL_CACHE:
            from sentence_transformers import SentenceTransformer

            from erc_llm.offline_models import resolve_model

            loaded = SentenceTransformer(resolve_model(model), device=device)
            loaded.max_seq_length = min(max_seq_length, loaded.max_seq_length or max_seq_length)
            _MODEL_CACHE[key] = loaded
        return _MODEL_CACHE[key]


class HashingEncoder:
    """Model-free bag of words and word bigrams, feature-hashed with a stable hash (fast, deterministic)."""

    def __init__(self, dim: int = 256) -> None:
        if dim < 8:
            raise ValueError("hashing encoder needs dim >= 8")
        self.dim = dim
        self.name = f"{HASHING_PREFIX}-{dim}"

    def _features(self, text: str) -> list[str]:
        """Words and adjacent word pairs of a lowercased text."""
        words = _WORD.findall(text.lower())
        return words + [f"{a} {b}" for a, b in zip(words, words[1:])]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised hashed feature vectors."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature in self._features(text):
                h = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        return normalise_rows(out)


def load_encoder(model: str = DEFAULT_EMBEDDING_MODEL, batch_size: int = 64, max_seq_length: int = 128) -> TextEncoder:
    """`hashing` / `hashing-<dim>` -> `HashingEncoder`; anything else -> `SentenceEncoder`."""
    if model == HASHING_PREFIX or model.startswith(f"{HASHING_PREFIX}-"):
        dim = int(model.split("-", 1)[1]) if "-" in model else 256
        return HashingEncoder(dim)
    return SentenceEncoder(model, batch_size=batch_size, max_seq_length=max_seq_length)


def encode_unique(encoder: TextEncoder, texts: Sequence[str]) -> np.ndarray:
    """Embed each distinct text once and return one row per input text (repeated lines are common)."""
    if not texts:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    distinct: dict[str, int] = {}
    for text in texts:
        distinct.setdefault(text, len(distinct))
    vectors = encoder.encode(list(distinct))
    return vectors[[distinct[t] for t in texts]]
