"""The feature store: precomputed per-utterance vectors, one file per modality plus a JSON manifest.

Layout of a store folder::

    manifest.json          {"schema": "erc_llm.features/1",
                            "modalities": {"audio": {"file": "audio.safetensors", "dim": 1611,
                                                     "source": "openSMILE IS13 (MELD release)", ...}}}
    audio.safetensors      one 1-D float tensor per utterance, keyed by utterance key
    visual.npz             the same as a NumPy .npz archive (either format, per modality)

An utterance is looked up under these keys, first match wins:

1. `Utterance.media["<modality>_features"]`, an explicit key set by the user's JSONL;
2. `<dialogue_id>/<index>`, e.g. `meld/test/12/3` or `emorynlp/s01_e01_c04/0` (what extraction writes);
3. `<split>/<utterance_id>`, e.g. `test/dia12_utt3` (MELD's own media names, unique only within a split);
4. `<utterance_id>`, e.g. `s01_e01_c04_u001` (EmoryNLP ids are unique across splits).

An utterance with no entry is *missing* for that modality: the model masks it, nothing crashes.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from erc_llm.data.schema import Utterance
from erc_llm.io import atomic_write_bytes, atomic_write_json

FEATURE_STORE_SCHEMA = "erc_llm.features/1"
MANIFEST_FILENAME = "manifest.json"
STORE_FORMATS = ("safetensors", "npz")


class FeatureStoreError(ValueError):
    """A feature store is missing, malformed, or inconsistent with its manifest."""


def canonical_key(utterance: Utterance) -> str:
    """The key extraction writes: `<dialogue_id>/<index>`."""
    return f"{utterance.dialogue_id}/{utterance.index}"


def candidate_keys(utterance: Utterance, modality: str, split: str | None = None) -> list[str]:
    """Keys an utterance may be stored under, in lookup order (see module docstring)."""
    keys: list[str] = []
    explicit = utterance.media.get(f"{modality}_features")
    if explicit:
        keys.append(explicit)
    keys.append(canonical_key(utterance))
    if utterance.utterance_id:
        if split:
            keys.append(f"{split}/{utterance.utterance_id}")
        keys.append(utterance.utterance_id)
    return keys


@dataclass
class ModalityEntry:
    """Manifest entry of one modality: its file, vector size, where the vectors come from, free-form details."""

    file: str
    dim: int
    source: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"file": self.file, "dim": self.dim, "source": self.source, "details": self.details}


def _read_vectors(path: Path) -> dict[str, np.ndarray]:
    """All vectors of one modality file (.safetensors or .npz)."""
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    raise FeatureStoreError(f"{path}: unsupported feature file type (use .safetensors or .npz)")


def _vectors_bytes(vectors: Mapping[str, np.ndarray], fmt: str) -> bytes:
    """Serialise key -> float32 vector as .safetensors or .npz bytes."""
    arrays = {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in vectors.items()}
    if fmt == "safetensors":
        from safetensors.numpy import save

        return save(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


class FeatureStore:
    """A folder of per-utterance feature vectors for one or more modalities (see module docstring)."""

    def __init__(self, root: str | os.PathLike[str], modalities: Mapping[str, ModalityEntry] | None = None) -> None:
        self.root = Path(root)
        self.modalities: dict[str, ModalityEntry] = dict(modalities or {})
        self._vectors: dict[str, dict[str, np.ndarray]] = {}

    # ---- reading --------------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike[str], create: bool = False) -> FeatureStore:
        """Open a store folder; with `create`, an absent folder gives an empty store."""
        root = Path(root)
        manifest_path = root / MANIFEST_FILENAME
        if not manifest_path.is_file():
            if create:
                return cls(root)
            raise FeatureStoreError(f"no feature store at {root} (missing {MANIFEST_FILENAME})")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise FeatureStoreError(f"{manifest_path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        if not isinstance(manifest, dict) or manifest.get("schema") != FEATURE_STORE_SCHEMA:
            raise FeatureStoreError(f"{manifest_path}: schema must be {FEATURE_STORE_SCHEMA!r}")
        modalities: dict[str, ModalityEntry] = {}
        for name, entry in (manifest.get("modalities") or {}).items():
            try:
                modalities[name] = ModalityEntry(
                    file=str(entry["file"]), dim=int(entry["dim"]), source=str(entry.get("source", "")),
                    details=dict(entry.get("details") or {}),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise FeatureStoreError(f"{manifest_path}: modality {name!r} needs 'file' and 'dim' ({exc})") from None
        return cls(root, modalities)

    def has(self, modality: str) -> bool:
        """Whether the manifest lists a modality."""
        return modality in self.modalities

    def dim(self, modality: str) -> int:
        """Vector size of a modality."""
        return self._entry(modality).dim

    def _entry(self, modality: str) -> ModalityEntry:
        """Manifest entry of a modality, or an error listing the ones present."""
        if modality not in self.modalities:
            raise FeatureStoreError(
                f"feature store {self.root} has no {modality!r} features (has: {sorted(self.modalities)})"
            )
        return self.modalities[modality]

    def vectors(self, modality: str) -> dict[str, np.ndarray]:
        """All key -> vector entries of a modality (read once, then kept in memory)."""
        if modality not in self._vectors:
            entry = self._entry(modality)
            path = self.root / entry.file
            if not path.is_file():
                raise FeatureStoreError(f"feature store {self.root}: manifest names {entry.file}, which is missing")
            vectors = _read_vectors(path)
            for key, value in vectors.items():
                if value.shape != (entry.dim,):
                    raise FeatureStoreError(
                        f"{path}: key {key!r} has shape {tuple(value.shape)}, manifest says dim {entry.dim}"
                    )
            self._vectors[modality] = vectors
        return self._vectors[modality]

    def lookup(self, modality: str, utterance: Utterance, split: str | None = None) -> np.ndarray | None:
        """The vector of one utterance, or None when the store has none for it."""
        vectors = self.vectors(modality)
        for key in candidate_keys(utterance, modality, split):
            if key in vectors:
                return vectors[key]
        return None

    def matrix(
        self, modality: str, utterances: Iterable[Utterance], split: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(features [N, dim] with zeros where missing, present mask [N]) for a list of utterances."""
        utterances = list(utterances)
        dim = self.dim(modality)
        features = np.zeros((len(utterances), dim), dtype=np.float32)
        present = np.zeros(len(utterances), dtype=bool)
        for row, utterance in enumerate(utterances):
            vector = self.lookup(modality, utterance, split)
            if vector is not None:
                features[row] = vector
                present[row] = True
        return features, present

    # ---- writing --------------------------------------------------------------------------------------
    def write(
        self,
        modality: str,
        vectors: Mapping[str, np.ndarray],
        source: str = "",
        details: Mapping[str, Any] | None = None,
        fmt: str = "safetensors",
    ) -> Path:
        """Replace one modality's vectors (all of one size) and update the manifest; return the data file."""
        if fmt not in STORE_FORMATS:
            raise FeatureStoreError(f"format must be one of {STORE_FORMATS}, got {fmt!r}")
        dims = {np.asarray(v).reshape(-1).shape[0] for v in vectors.values()}
        if len(dims) > 1:
            raise FeatureStoreError(f"{modality}: vectors of different sizes {sorted(dims)}")
        for key, value in vectors.items():
            if np.asarray(value).ndim != 1:
                raise FeatureStoreError(f"{modality}: key {key!r} is not a 1-D vector (shape {np.shape(value)})")
        if not dims:
            previous = self.modalities.get(modality)
            if previous is None:
                raise FeatureStoreError(f"{modality}: nothing to write and no known dim")
            dims = {previous.dim}
        dim = dims.pop()
        entry = ModalityEntry(file=f"{modality}.{fmt}", dim=dim, source=source, details=dict(details or {}))
        path = atomic_write_bytes(self.root / entry.file, _vectors_bytes(vectors, fmt))
        self.modalities[modality] = entry
        self._vectors[modality] = {k: np.asarray(v, dtype=np.float32) for k, v in vectors.items()}
        self.save_manifest()
        return path

    def save_manifest(self) -> Path:
        """Write manifest.json atomically."""
        document = {
            "schema": FEATURE_STORE_SCHEMA,
            "modalities": {name: entry.to_dict() for name, entry in sorted(self.modalities.items())},
        }
        return atomic_write_json(self.root / MANIFEST_FILENAME, document)


def write_feature_store(
    root: str | os.PathLike[str],
    modality: str,
    vectors: Mapping[str, np.ndarray],
    source: str = "",
    details: Mapping[str, Any] | None = None,
    fmt: str = "safetensors",
) -> FeatureStore:
    """Create or extend the store at `root` with one modality's key -> vector entries (how users bring features)."""
    store = FeatureStore.open(root, create=True)
    store.write(modality, vectors, source=source, details=details, fmt=fmt)
    return store
