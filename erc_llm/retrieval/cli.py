"""`erc-llm index build|query`: build the biography store and FAISS indices from a training split, query them."""

from __future__ import annotations

import argparse
import json
import sys


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the `index` command group (`build`, `query`)."""
    index = subparsers.add_parser("index", help="speaker biographies and FAISS indices from a training split")
    sub = index.add_subparsers(dest="index_command", required=True)

    p = sub.add_parser("build", help="build biographies + speaker and utterance indices from a corpus's train split")
    p.add_argument("--corpus", default="meld", help="corpus name or JSONL path (its train split is used)")
    p.add_argument("--data-dir", help="corpus folder (default: $ERC_LLM_DATA_DIR or ~/.cache/erc_llm/data)")
    p.add_argument("--out", help="write the index here (default: the keyed folder under --index-dir that "
                                 "`build_prompt_builder` reuses)")
    p.add_argument("--index-dir", help="root of cached indices (default: $ERC_LLM_INDEX_DIR or retrieval/indices/)")
    p.add_argument("--config", help="YAML with an optional `retrieval:` section and PromptConfig keys "
                                    "(demonstration_query, biography_kind)")
    p.add_argument("--kind", choices=["flat", "ivf", "hnsw"], help="utterance index type (overrides the config)")
    p.add_argument("--embedding-model", help="sentence-transformers model or 'hashing' (overrides the config)")
    p.add_argument("--biography-kind", choices=["profile", "llm"], help="also write LLM biographies (llm)")
    p.add_argument("--llm-model", help="model writing LLM biographies (default SmolLM2-135M-Instruct)")
    p.add_argument("--rebuild", action="store_true", help="build again even if a finished index exists")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("query", help="print the top-k training lines and speakers nearest to a text")
    p.add_argument("index", help="an index folder written by `erc-llm index build`")
    p.add_argument("text")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--what", choices=["utterances", "speakers", "both"], default="both")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_query)


def cmd_build(args: argparse.Namespace) -> int:
    """Build (or find) the index and print where it is, its counts and timings."""
    import dataclasses
    import time

    from erc_llm.data.corpora import load_split
    from erc_llm.data.speakers import SpeakerRegistry
    from erc_llm.prompting.dataset import corpus_label_set, load_prompt_settings
    from erc_llm.retrieval.index import PARTS, RetrievalIndex, load_or_build_index

    prompt, retrieval = load_prompt_settings(args.config)
    changes = {k: v for k, v in {"index_kind": args.kind, "embedding_model": args.embedding_model}.items() if v}
    retrieval = dataclasses.replace(retrieval, **changes)
    if args.llm_model:
        retrieval.llm = dataclasses.replace(retrieval.llm, model=args.llm_model)
    biography_kind = args.biography_kind or prompt.biography_kind
    started = time.perf_counter()
    train = load_split(args.corpus, "train", args.data_dir).dialogues
    registry = SpeakerRegistry.build([train])
    label_set = corpus_label_set(args.corpus, train)
    if args.out:
        built = RetrievalIndex.build(train, registry, label_set, args.corpus, retrieval, PARTS,
                                     prompt.demonstration_query, biography_kind, progress=True)
        folder = built.save(args.out)
    else:
        built, folder = load_or_build_index(args.index_dir, args.corpus, train, registry, label_set, retrieval,
                                            PARTS, prompt.demonstration_query, biography_kind,
                                            rebuild=args.rebuild, progress=True)
    manifest = built.manifest
    print(folder)
    print(f"corpus {manifest['corpus']} ({', '.join(manifest['source_splits'])}): "
          + ", ".join(f"{v} {k}" for k, v in manifest["counts"].items()))
    print(f"embedding {manifest['embedding_model']} ({manifest['embedding_dim']}-dim), utterance index "
          f"{manifest['utterance_index_kind']}, biographies {manifest['biography_kind']}")
    print("build timings (s): " + ", ".join(f"{k}={v}" for k, v in manifest["timings_s"].items())
          + f"; this command {time.perf_counter() - started:.1f}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    """Print nearest training lines and speakers of a text."""
    from erc_llm.retrieval.index import RetrievalIndex
    from erc_llm.retrieval.retriever import ContextRetriever

    index = RetrievalIndex.load(args.index)
    retriever = ContextRetriever(index, biography_kind=index.manifest.get("biography_kind", "profile"))
    vector = retriever.encoder.encode([args.text])
    out: dict[str, list[dict]] = {}
    if args.what in ("utterances", "both") and index.utterance_index is not None:
        hits = retriever.nearest_lines(vector, args.k, dedupe=False)[0]
        out["utterances"] = [{"score": round(h.score, 4), **index.utterance_rows[h.row]} for h in hits]
    if args.what in ("speakers", "both") and index.speaker_index is not None and retriever.store is not None:
        hits = retriever.nearest_speakers(vector[0], args.k, eligible_only=False)
        out["speakers"] = []
        for h in hits:
            speaker_id = index.speaker_ids[h.row]
            record = retriever.store.records[speaker_id]
            out["speakers"].append({"score": round(h.score, 4), "speaker_id": speaker_id, "name": record.name,
                                    "n_lines": record.n_lines, "biography": retriever.store.text(speaker_id)})
    if not out:
        print("error: this index has none of the requested parts", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    for row in out.get("utterances", []):
        print(f"{row['score']:.3f}  {row['label']:<9} {row['dialogue_id']}[{row['index']}] {row['speaker']}: "
              f"{row['text']}")
    if "utterances" in out and "speakers" in out:
        print()
    for row in out.get("speakers", []):
        print(f"{row['score']:.3f}  {row['speaker_id']} ({row['n_lines']} lines): {row['biography'][:160]}")
    return 0
