"""FAISS indices over speaker biographies and training utterances, persisted without pickle.

An index directory holds (all written into a temporary sibling folder, then renamed into place):

* `manifest.json` - schema name/version, corpus, source split, settings, input sha256, counts, timings;
* `speakers.json` - the speaker registry used;
* `biographies.jsonl` - the biography store, with the fold biographies training prompts use (see
  `erc_llm.retrieval.biographies` and `RetrievalConfig.training_folds`);
* `speakers.faiss` + `speakers.ids.json` - one row per speaker (see `RetrievalConfig.speaker_vector`);
* `utterances.faiss` + `utterances.rows.json` + `utterances.npy` - one row per labelled training line
  (dialogue id, position, speaker, text, gold label) and its embedding.

`load_or_build_index` keeps one such directory per (corpus, training data, settings) under an index root, so
repeated runs reuse it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from erc_llm.data.labels import LabelSet
from erc_llm.data.schema import Dialogue
from erc_llm.data.speakers import SpeakerRegistry
from erc_llm.io import atomic_write_json, file_lock, replace_dir
from erc_llm.paths import cache_root
from erc_llm.retrieval.biographies import (
    BiographyStore,
    TextGenerator,
    inputs_sha256,
    lines_by_speaker,
    require_training_split,
)
from erc_llm.retrieval.config import RetrievalConfig
from erc_llm.retrieval.embed import TextEncoder, encode_unique, load_encoder, normalise_rows

INDEX_SCHEMA = "erc_llm.retrieval_index"
INDEX_SCHEMA_VERSION = 2  # 2: fold biographies for training prompts
INDEX_DIR_ENV = "ERC_LLM_INDEX_DIR"
PARTS = ("biographies", "speakers", "utterances")
MANIFEST = "manifest.json"
SINGLE_THREAD_BELOW = 32
BLAS_FROM = 8


# ---- one FAISS index ---------------------------------------------------------------------------------------
class VectorIndex:
    """A FAISS inner-product index (flat, IVF or HNSW) over normalised vectors."""

    def __init__(self, index: Any, kind: str) -> None:
        self.index = index
        self.kind = kind

    @classmethod
    def build(cls, vectors: np.ndarray, kind: str = "flat", config: RetrievalConfig | None = None) -> VectorIndex:
        """Index the rows of `vectors` (row i gets id i)."""
        import faiss

        cfg = config or RetrievalConfig()
        vectors = normalise_rows(vectors)
        n, dim = vectors.shape
        if kind == "flat" or n == 0:
            index = faiss.IndexFlatIP(dim)
            kind = "flat"
        elif kind == "ivf":
            nlist = cfg.ivf_nlist or max(1, int(round(4 * math.sqrt(n))))
            nlist = max(1, min(nlist, n // 39 or 1))  # faiss wants >= 39 training points per list
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = cfg.hnsw_ef_construction
        else:
            raise ValueError(f"unknown index kind {kind!r}")
        if n:
            index.add(vectors)
        built = cls(index, kind)
        built.configure(cfg)
        return built

    def configure(self, config: RetrievalConfig) -> None:
        """Apply the search-time settings (IVF nprobe, HNSW efSearch)."""
        if self.kind == "ivf":
            self.index.nprobe = config.ivf_nprobe
        elif self.kind == "hnsw":
            self.index.hnsw.efSearch = config.hnsw_ef_search

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row ids) of the k best rows per query; id -1 where fewer than k exist.

        Fewer than `SINGLE_THREAD_BELOW` queries are searched on one OpenMP thread: for a handful of queries
        FAISS's thread start-up and spinning cost far more than the scan (tenfold on a busy 2-core machine).
        A flat index searches `BLAS_FROM` or more queries as one matrix product (FAISS's own threshold sends
        small batches to a per-query scan, which reads the whole index once per query).
        """
        import faiss

        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(k, self.ntotal)) if self.ntotal else 1
        if not self.ntotal:
            return np.zeros((len(queries), 1), np.float32), -np.ones((len(queries), 1), np.int64)
        threads, blas = faiss.omp_get_max_threads(), faiss.cvar.distance_compute_blas_threshold
        if len(queries) < SINGLE_THREAD_BELOW:
            faiss.omp_set_num_threads(1)
        if self.kind == "flat" and len(queries) >= BLAS_FROM:
            faiss.cvar.distance_compute_blas_threshold = 1
        try:
            return self.index.search(queries, k)
        finally:
            faiss.omp_set_num_threads(threads)
            faiss.cvar.distance_compute_blas_threshold = blas

    def save(self, path: Path) -> None:
        """`faiss.write_index` (FAISS's own binary format, no pickle)."""
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, kind: str, config: RetrievalConfig) -> VectorIndex:
        """Read an index written by `save`."""
        import faiss

        loaded = cls(faiss.read_index(str(path)), kind)
        loaded.configure(config)
        return loaded


# ---- the retrieval artefact ----------------------------------------------------------------------------------
def demonstration_text(dialogue: Dialogue, index: int, mode: str) -> str:
    """What is embedded for a line: the line itself, or (`with_previous`) the previous line, a newline, the line."""
    utt = dialogue.utterances[index]
    if mode == "with_previous" and index > 0:
        return f"{dialogue.utterances[index - 1].text}\n{utt.text}"
    return utt.text


@dataclass
class RetrievalIndex:
    """Biographies, the speaker index and the training-utterance index of one corpus's training split."""

    manifest: dict[str, Any]
    registry: SpeakerRegistry
    config: RetrievalConfig
    biographies: BiographyStore | None = None
    speaker_ids: list[str] = field(default_factory=list)
    speaker_index: VectorIndex | None = None
    utterance_rows: list[dict[str, Any]] = field(default_factory=list)
    utterance_index: VectorIndex | None = None
    utterance_vectors: np.ndarray | None = None

    @property
    def demonstration_query(self) -> str:
        return str(self.manifest.get("demonstration_query", "line"))

    @property
    def embedding_model(self) -> str:
        return str(self.manifest["embedding_model"])

    @classmethod
    def build(
        cls,
        dialogues: Sequence[Dialogue],
        registry: SpeakerRegistry,
        label_set: LabelSet,
        corpus: str,
        config: RetrievalConfig | None = None,
        parts: Sequence[str] = PARTS,
        demonstration_query: str = "line",
        biography_kind: str = "profile",
        encoder: TextEncoder | None = None,
        generator: TextGenerator | None = None,
        progress: bool = False,
    ) -> RetrievalIndex:
        """Build the requested parts from training dialogues only (`LeakageError` otherwise)."""
        cfg = config or RetrievalConfig()
        dialogues = require_training_split(dialogues)
        parts = [p for p in PARTS if p in set(parts)]
        if "speakers" in parts and "biographies" not in parts:
            parts.insert(0, "biographies")
        timings: dict[str, float] = {}
        needs_encoder = "speakers" in parts or "utterances" in parts
        if needs_encoder and encoder is None:
            started = time.perf_counter()
            encoder = load_encoder(cfg.embedding_model, cfg.embedding_batch_size, cfg.max_seq_length)
            timings["load_encoder_s"] = time.perf_counter() - started
        built = cls(manifest={}, registry=registry, config=cfg)

        if "biographies" in parts:
            started = time.perf_counter()
            store = BiographyStore.build(dialogues, registry, label_set, corpus, cfg.profile, cfg.training_folds)
            if biography_kind == "llm":
                if generator is None:
                    from erc_llm.retrieval.generation import make_biography_generator

                    generator = make_biography_generator(cfg.llm)
                store.add_llm_biographies(dialogues, registry, generator, cfg.llm,
                                          getattr(generator, "name", type(generator).__name__), progress=progress)
            built.biographies = store
            timings["biographies_s"] = time.perf_counter() - started

        labelled = [(d, u) for d in dialogues for u in d if u.label is not None and u.text.strip()]
        line_vectors: np.ndarray | None = None
        if "utterances" in parts or ("speakers" in parts and cfg.speaker_vector != "biography"):
            assert encoder is not None
            started = time.perf_counter()
            line_vectors = encode_unique(encoder, [u.text for _, u in labelled])
            timings["embed_utterances_s"] = time.perf_counter() - started

        if "speakers" in parts:
            assert encoder is not None and built.biographies is not None
            started = time.perf_counter()
            built.speaker_ids, vectors = _speaker_vectors(
                dialogues, registry, built.biographies, labelled, line_vectors, encoder, cfg.speaker_vector
            )
            timings["embed_speakers_s"] = time.perf_counter() - started
            started = time.perf_counter()
            built.speaker_index = VectorIndex.build(vectors, "flat", cfg)
            timings["index_speakers_s"] = time.perf_counter() - started

        if "utterances" in parts:
            assert encoder is not None and line_vectors is not None
            if demonstration_query == "with_previous":
                started = time.perf_counter()
                line_vectors = encode_unique(encoder, [demonstration_text(d, u.index, demonstration_query)
                                                       for d, u in labelled])
                timings["embed_utterances_s"] += time.perf_counter() - started
            built.utterance_rows = [
                {"dialogue_id": d.id, "index": u.index, "utterance_id": u.utterance_id, "speaker": u.speaker,
                 "text": u.text, "label": u.label}
                for d, u in labelled
            ]
            built.utterance_vectors = line_vectors
            started = time.perf_counter()
            built.utterance_index = VectorIndex.build(line_vectors, cfg.index_kind, cfg)
            timings["index_utterances_s"] = time.perf_counter() - started

        built.manifest = {
            "schema": INDEX_SCHEMA,
            "version": INDEX_SCHEMA_VERSION,
            "corpus": corpus,
            "source_splits": sorted({d.split for d in dialogues}),
            "labels": list(label_set.labels),
            "parts": parts,
            "embedding_model": encoder.name if encoder is not None else None,
            "embedding_dim": encoder.dim if encoder is not None else None,
            "demonstration_query": demonstration_query,
            "biography_kind": biography_kind,
            "utterance_index_kind": built.utterance_index.kind if built.utterance_index else None,
            "retrieval_config": cfg.to_dict(),
            "inputs_sha256": inputs_sha256(dialogues, registry),
            "counts": {"dialogues": len(dialogues), "speakers": len(built.speaker_ids),
                       "biographies": len(built.biographies or {}), "utterances": len(built.utterance_rows)},
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return built

    # ---- persistence ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write every part into a temporary sibling folder, then swap it into place."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            self.registry.save(tmp / "speakers.json")
            if self.biographies is not None:
                self.biographies.save(tmp / "biographies.jsonl")
            if self.speaker_index is not None:
                self.speaker_index.save(tmp / "speakers.faiss")
                atomic_write_json(tmp / "speakers.ids.json", self.speaker_ids, indent=None)
            if self.utterance_index is not None:
                self.utterance_index.save(tmp / "utterances.faiss")
                atomic_write_json(tmp / "utterances.rows.json", self.utterance_rows, indent=None)
                with (tmp / "utterances.npy").open("wb") as handle:
                    np.save(handle, np.asarray(self.utterance_vectors, dtype=np.float32), allow_pickle=False)
            atomic_write_json(tmp / MANIFEST, self.manifest)  # written last: its presence marks a finished build
            replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    @classmethod
    def load(cls, path: str | Path) -> RetrievalIndex:
        """Read an index directory written by `save`; checks schema and version."""
        path = Path(path)
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} is not a finished retrieval index (no {MANIFEST})") from None
        if manifest.get("schema") != INDEX_SCHEMA or manifest.get("version") != INDEX_SCHEMA_VERSION:
            raise ValueError(f"{path}: index schema {manifest.get('schema')!r} v{manifest.get('version')!r}, "
                             f"expected {INDEX_SCHEMA} v{INDEX_SCHEMA_VERSION}; rebuild it")
        cfg = RetrievalConfig.from_dict(manifest["retrieval_config"])
        loaded = cls(manifest=manifest, registry=SpeakerRegistry.load(path / "speakers.json"), config=cfg)
        if (path / "biographies.jsonl").exists():
            loaded.biographies = BiographyStore.load(path / "biographies.jsonl", manifest.get("biography_kind"))
        if (path / "speakers.faiss").exists():
            loaded.speaker_index = VectorIndex.load(path / "speakers.faiss", "flat", cfg)
            loaded.speaker_ids = json.loads((path / "speakers.ids.json").read_text(encoding="utf-8"))
        if (path / "utterances.faiss").exists():
            loaded.utterance_index = VectorIndex.load(path / "utterances.faiss", manifest["utterance_index_kind"], cfg)
            loaded.utterance_rows = json.loads((path / "utterances.rows.json").read_text(encoding="utf-8"))
            loaded.utterance_vectors = np.load(path / "utterances.npy", allow_pickle=False)
        return loaded


def _speaker_vectors(
    dialogues: Sequence[Dialogue],
    registry: SpeakerRegistry,
    store: BiographyStore,
    labelled: Sequence[tuple[Dialogue, Any]],
    line_vectors: np.ndarray | None,
    encoder: TextEncoder,
    mode: str,
) -> tuple[list[str], np.ndarray]:
    """Speaker ids (sorted) and one normalised vector each: line centroid, biography embedding, or both."""
    ids = sorted(store.records)
    vectors = np.zeros((len(ids), encoder.dim), dtype=np.float32)
    if mode in ("lines", "mixed"):
        assert line_vectors is not None
        row_of = {(d.id, u.index): i for i, (d, u) in enumerate(labelled)}
        by_speaker = lines_by_speaker(dialogues, registry)
        for i, speaker_id in enumerate(ids):
            rows = [row_of[u.key] for u in by_speaker.get(speaker_id, []) if u.key in row_of]
            if rows:
                vectors[i] = line_vectors[rows].mean(axis=0)
        vectors = normalise_rows(vectors)
    if mode in ("biography", "mixed"):
        bio = encoder.encode([store.text(s) or "" for s in ids])
        vectors = normalise_rows(vectors + bio)
    return ids, vectors


# ---- cache of built indices -------------------------------------------------------------------------------
def default_index_root() -> Path:
    """$ERC_LLM_INDEX_DIR, else the checkout's `retrieval/indices/`, else `<cache>/indices`."""
    if os.environ.get(INDEX_DIR_ENV):
        return Path(os.environ[INDEX_DIR_ENV]).expanduser()
    checkout = Path(__file__).resolve().parents[2] / "retrieval"
    if (checkout / "README.md").is_file():
        return checkout / "indices"
    return cache_root() / "indices"


def index_key(corpus: str, inputs_sha: str, config: RetrievalConfig, parts: Sequence[str],
              demonstration_query: str, biography_kind: str) -> str:
    """Folder name for one build: corpus slug + a hash of everything that changes the contents."""
    settings = config.to_dict()
    settings.pop("embedding_batch_size", None)  # affects speed only
    if biography_kind != "llm":
        settings.pop("llm", None)
    payload = {"schema": [INDEX_SCHEMA, INDEX_SCHEMA_VERSION], "corpus": corpus, "inputs": inputs_sha,
               "config": settings, "parts": sorted(parts), "demonstration_query": demonstration_query,
               "biography_kind": biography_kind}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    slug = re.sub(r"[^a-z0-9]+", "_", Path(corpus).stem.lower()).strip("_") or "corpus"
    return f"{slug}-{digest}"


def load_or_build_index(
    root: str | Path | None,
    corpus: str,
    dialogues: Sequence[Dialogue],
    registry: SpeakerRegistry,
    label_set: LabelSet,
    config: RetrievalConfig | None = None,
    parts: Sequence[str] = PARTS,
    demonstration_query: str = "line",
    biography_kind: str = "profile",
    generator: TextGenerator | None = None,
    rebuild: bool = False,
    progress: bool = False,
) -> tuple[RetrievalIndex, Path]:
    """The index for these training dialogues and settings: loaded from `root/<key>` if built before, else built
    and saved there. Returns the index and its folder."""
    cfg = config or RetrievalConfig()
    dialogues = require_training_split(dialogues)
    root = Path(root) if root is not None else default_index_root()
    key = index_key(corpus, inputs_sha256(dialogues, registry), cfg, parts, demonstration_query, biography_kind)
    folder = root / key
    with file_lock(root / f".{key}.lock"):  # two runs never build the same index at once
        if not rebuild and (folder / MANIFEST).exists():
            try:
                return RetrievalIndex.load(folder), folder
            except ValueError as exc:  # an index of an older schema: build it again
                print(f"erc_llm: rebuilding {folder}: {exc}", file=sys.stderr)
        built = RetrievalIndex.build(dialogues, registry, label_set, corpus, cfg, parts, demonstration_query,
                                     biography_kind, generator=generator, progress=progress)
        built.save(folder)
    return built, folder
