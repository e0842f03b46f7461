"""Weighted-F1 scores that published papers report for the corpora here (theirs, not reproduced by this toolkit);
`erc-llm compare` lists them apart from the compared runs."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ReferenceResult:
    """A weighted-F1 score as printed in a published paper (percent), not reproduced by this toolkit."""

    corpus: str
    split: str
    system: str
    setting: str
    weighted_f1: float
    source: str


REFERENCE_RESULTS: tuple[ReferenceResult, ...] = (
    ReferenceResult("meld", "test", "InstructERC", "LLaMA2-7B, LoRA", 69.15, "Lei et al., 2023"),
    ReferenceResult("meld", "test", "BiosERC", "Llama-2-7B, LoRA", 68.72, "Xue et al., 2024"),
    ReferenceResult("meld", "test", "SPCL", "fine-tuned encoder", 67.25, "Song et al., 2022"),
    ReferenceResult("meld", "test", "CoMPM", "fine-tuned encoder", 66.52, "Lee & Lee, 2022"),
    ReferenceResult("emorynlp", "test", "InstructERC", "LLaMA2-7B, LoRA", 41.37, "Lei et al., 2023"),
    ReferenceResult("emorynlp", "test", "BiosERC", "Llama-2-7B, LoRA", 41.44, "Xue et al., 2024"),
    ReferenceResult("emorynlp", "test", "SPCL", "fine-tuned encoder", 40.94, "Song et al., 2022"),
    ReferenceResult("emorynlp", "test", "TUCORE-GCN", "fine-tuned encoder", 39.24, "Lee & Choi, 2021"),
    ReferenceResult("emorynlp", "test", "CoMPM", "fine-tuned encoder", 38.93, "Lee & Lee, 2022"),
)

_CORPUS_ALIASES = {"emory": "emorynlp"}


def normalise_name(name: str) -> str:
    """Case- and punctuation-insensitive form of a corpus or split name ('EmoryNLP' == 'emory_nlp')."""
    compact = re.sub(r"[^a-z0-9]", "", name.lower())
    return _CORPUS_ALIASES.get(compact, compact)


def reference_results_for(corpus: str, split: str) -> list[ReferenceResult]:
    """Published results for ``corpus``/``split`` (names compared case- and punctuation-insensitively)."""
    corpus_key, split_key = normalise_name(corpus), normalise_name(split)
    return [
        ref
        for ref in REFERENCE_RESULTS
        if ref.corpus == corpus_key and normalise_name(ref.split) == split_key
    ]
