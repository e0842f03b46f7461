"""Data layer: one schema for every corpus, label sets, loaders, speaker identity, HF conversion."""

from erc_llm.data.corpora import CORPORA, get_corpus, load_split, split_path
from erc_llm.data.errors import DataFormatError, SkippedRow
from erc_llm.data.labels import (
    CROSS_CORPUS_MAP,
    EMORYNLP_LABELS,
    IEMOCAP_LABELS,
    LABEL_SETS,
    MELD_LABELS,
    LabelSet,
    get_label_set,
)
from erc_llm.data.loaders import load_emorynlp_csv, load_emorynlp_json, load_jsonl, load_meld_csv, write_jsonl
from erc_llm.data.schema import Dialogue, LoadedSplit, Utterance
from erc_llm.data.sources import DataSource, DataSourceError, resolve_labels, resolve_source
from erc_llm.data.speakers import GROUP_ID, UNKNOWN_ID, SpeakerRegistry
from erc_llm.data.text import clean_text

__all__ = [
    "CORPORA", "CROSS_CORPUS_MAP", "EMORYNLP_LABELS", "GROUP_ID", "IEMOCAP_LABELS", "LABEL_SETS", "MELD_LABELS",
    "UNKNOWN_ID", "DataFormatError", "DataSource", "DataSourceError", "Dialogue", "LabelSet", "LoadedSplit", "SkippedRow", "SpeakerRegistry", "Utterance",
    "clean_text", "get_corpus", "get_label_set", "load_emorynlp_csv", "load_emorynlp_json", "load_jsonl",
    "load_meld_csv", "load_split", "resolve_labels", "resolve_source", "split_path", "write_jsonl",
]
