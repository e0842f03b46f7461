"""Speaker biographies from training data, FAISS retrieval of biographies and labelled demonstrations."""

from erc_llm.retrieval.biographies import (
    SCHEMA_NAME,
    SCHEMA_VERSION,
    BiographyRecord,
    BiographyStore,
    SpeakerProfile,
    TextGenerator,
    build_profile,
    llm_biography_prompt,
    render_profile,
    require_training_split,
)
from erc_llm.retrieval.config import LLMBiographyConfig, ProfileConfig, RetrievalConfig
from erc_llm.retrieval.embed import HashingEncoder, SentenceEncoder, TextEncoder, load_encoder
from erc_llm.retrieval.index import (
    RetrievalIndex,
    VectorIndex,
    default_index_root,
    demonstration_text,
    index_key,
    load_or_build_index,
)
from erc_llm.retrieval.retriever import ContextRetriever, Neighbour, speaker_prefix_text

__all__ = [
    "SCHEMA_NAME", "SCHEMA_VERSION", "BiographyRecord", "BiographyStore", "ContextRetriever", "HashingEncoder",
    "LLMBiographyConfig", "Neighbour", "ProfileConfig", "RetrievalConfig", "RetrievalIndex", "SentenceEncoder",
    "SpeakerProfile", "TextEncoder", "TextGenerator", "VectorIndex", "build_profile", "default_index_root",
    "demonstration_text", "index_key", "llm_biography_prompt", "load_encoder", "load_or_build_index",
    "render_profile", "require_training_split", "speaker_prefix_text",
]
