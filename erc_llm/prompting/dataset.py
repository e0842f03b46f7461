"""Prompt datasets: a ready `PromptBuilder` for a corpus (registry, biographies, FAISS index from its training
split, cached on disk) and HF `datasets.Dataset`s of rendered prompts for SFT and for labelling."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from erc_llm.data.corpora import load_split
from erc_llm.data.labels import LabelSet
from erc_llm.data.schema import Dialogue
from erc_llm.data.speakers import SpeakerRegistry
from erc_llm.prompting.builder import PromptBuilder, PromptExample
from erc_llm.prompting.config import PromptConfig
from erc_llm.retrieval.biographies import TextGenerator
from erc_llm.retrieval.config import RetrievalConfig


def corpus_label_set(corpus: str, train: Sequence[Dialogue]) -> LabelSet:
    """The label set a data source declares (a corpus's own, labels.txt/.json, a JSONL `{"labels": [...]}` line),
    else the one its training labels fit (`erc_llm.data.sources.DataSource.label_set_for`)."""
    from erc_llm.data.sources import resolve_source

    return resolve_source(corpus).label_set_for(train)


def retrieval_parts(config: PromptConfig) -> list[str]:
    """Which parts of the retrieval index a prompt config needs."""
    parts = []
    if config.use_biography:
        parts.append("biographies")
        if config.unseen_speaker_biography == "nearest":
            parts.append("speakers")
    if config.use_demonstrations:
        parts.append("utterances")
    return parts


def build_prompt_builder(
    config: PromptConfig,
    corpus: str,
    data_dir: str | os.PathLike | None = None,
    index_dir: str | os.PathLike | None = None,
    *,
    retrieval: RetrievalConfig | None = None,
    registry: SpeakerRegistry | None = None,
    generator: TextGenerator | None = None,
    rebuild: bool = False,
    progress: bool = False,
    label_set: LabelSet | None = None,
) -> PromptBuilder:
    """A ready `PromptBuilder` for `corpus` (a known corpus name or a JSONL path with a train split).

    Loads the corpus's **train** split, builds the speaker registry from it (unless `registry` is given),
    and, when `config` uses biographies or demonstrations, the biography store and FAISS indices from that
    same training split. These are cached under `index_dir` (default: `$ERC_LLM_INDEX_DIR`, else the
    checkout's `retrieval/indices/`, else `~/.cache/erc_llm/indices`) in a folder keyed by corpus, training
    data hash and every setting that changes their contents, so repeated runs reuse them (`rebuild=True`
    forces a new build). `retrieval` sets the embedding model and index type (default: all-MiniLM-L6-v2,
    exact flat index); `generator` writes LLM biographies when `config.biography_kind == "llm"` (default:
    SmolLM2-135M-Instruct through transformers). Nothing from dev/test is read. `label_set` (default: the
    corpus's, see `corpus_label_set`) is the set the prompts list and the training labels are checked against.
    """
    train = load_split(corpus, "train", data_dir, label_set=label_set).dialogues
    label_set = label_set or corpus_label_set(corpus, train)
    registry = registry if registry is not None else SpeakerRegistry.build([train])
    parts = retrieval_parts(config)
    if not parts:
        return PromptBuilder(config, label_set, registry)
    from erc_llm.retrieval.index import load_or_build_index
    from erc_llm.retrieval.retriever import ContextRetriever

    index, _ = load_or_build_index(
        index_dir, corpus, train, registry, label_set, retrieval or RetrievalConfig(), parts,
        demonstration_query=config.demonstration_query, biography_kind=config.biography_kind,
        generator=generator, rebuild=rebuild, progress=progress,
    )
    retriever = ContextRetriever(index, biography_kind=config.biography_kind,
                                 unseen_speaker_biography=config.unseen_speaker_biography)
    return PromptBuilder(config, label_set, registry,
                         biographies=retriever if config.use_biography else None,
                         demonstrations=retriever if config.use_demonstrations else None)


def warm_sources(builder: PromptBuilder, dialogues: Sequence[Dialogue]) -> None:
    """Let retrieval sources embed a whole split in one batch before prompts are rendered one by one."""
    done: set[int] = set()
    for source in (builder.biographies, builder.demonstrations):
        warm = getattr(source, "warm", None)
        if warm is not None and id(source) not in done:
            warm(dialogues)
            done.add(id(source))


def target_id(example: PromptExample) -> str:
    """The id a labelled row is reported under: the corpus utterance id, else `dialogue_id#index`."""
    return example.utterance_id or f"{example.dialogue_id}#{example.index}"


def examples_to_rows(examples: Iterable[PromptExample], completion: bool) -> list[dict[str, Any]]:
    """Plain dict rows (messages, ids, label; `completion` = label for SFT rows)."""
    rows = []
    for e in examples:
        row = {"messages": [dict(m) for m in e.messages], "dialogue_id": e.dialogue_id, "index": e.index,
               "utterance_id": e.utterance_id, "target_id": target_id(e), "speaker": e.speaker, "label": e.label}
        if completion:
            row["completion"] = e.label
        rows.append(row)
    return rows


def _to_dataset(rows: list[dict[str, Any]]):
    """A `datasets.Dataset` from rows (an empty one keeps the columns)."""
    from datasets import Dataset

    if rows:
        return Dataset.from_list(rows)
    columns = ["messages", "dialogue_id", "index", "utterance_id", "target_id", "speaker", "label", "completion"]
    return Dataset.from_dict({c: [] for c in columns})


def sft_dataset(builder: PromptBuilder, dialogues: Sequence[Dialogue], assistant_turn: bool = False):
    """(messages, completion) rows for every labelled training utterance (history from gold training labels).

    `messages` holds the system and user turns; `completion` is the label word. With `assistant_turn=True`
    the label is also appended to `messages` as the assistant's turn (TRL's conversational "messages" format).
    """
    warm_sources(builder, dialogues)
    rows = examples_to_rows(builder.training_examples(dialogues), completion=True)
    if assistant_turn:
        for row in rows:
            row["messages"].append({"role": "assistant", "content": row["completion"]})
    return _to_dataset(rows)


def labelling_dataset(builder: PromptBuilder, dialogues: Sequence[Dialogue]):
    """(messages, target_id) rows for labelling without label information (gold kept in `label` for scoring).

    Configs whose history comes from the model's own predictions cannot be rendered ahead: label them in
    rounds with `erc_llm.labelling.loop.label_dialogues` instead.
    """
    warm_sources(builder, dialogues)
    return _to_dataset(examples_to_rows(builder.unconditioned_examples(dialogues), completion=False))


def load_prompt_settings(path: str | os.PathLike | None) -> tuple[PromptConfig, RetrievalConfig]:
    """`PromptConfig` and `RetrievalConfig` from a YAML file (None -> defaults).

    Prompt switches are read from a `prompt:` section if present, else from the top level, where keys that
    are not `PromptConfig` fields are ignored (so an SFT or labelling recipe YAML works as is). Retrieval
    settings come from an optional `retrieval:` section.
    """
    if path is None:
        return PromptConfig(), RetrievalConfig()
    import dataclasses

    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping at the top level")
    section = data.get("prompt", data)
    names = {f.name for f in dataclasses.fields(PromptConfig)}
    prompt = PromptConfig(**{k: v for k, v in section.items() if k in names})
    return prompt, RetrievalConfig.from_dict(data.get("retrieval"))
