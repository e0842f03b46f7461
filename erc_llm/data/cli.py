"""`erc-llm data ...` and `erc-llm speakers ...` commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from erc_llm.data.corpora import CORPORA, load_split
from erc_llm.data.errors import DataFormatError
from erc_llm.data.labels import get_label_set


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="corpus folder (default: $ERC_LLM_DATA_DIR or ~/.cache/erc_llm/data)")


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the `data` and `speakers` command groups."""
    data = subparsers.add_parser("data", help="prepare, inspect, validate and export corpora")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    p = data_sub.add_parser("prepare", help="download the public corpus files and verify them")
    _add_data_dir(p)
    p.add_argument("--corpus", nargs="+", default=["meld", "emorynlp"], choices=sorted(CORPORA))
    p.add_argument("--mirror", help="base URL laid out like the data folder (e.g. file:///path) instead of the source")
    p.add_argument("--force", action="store_true", help="download again even if the file is present")
    p.set_defaults(func=cmd_prepare)

    p = data_sub.add_parser("stats", help="corpus statistics per split (Markdown table)")
    _add_data_dir(p)
    p.add_argument("--corpus", nargs="+", default=["meld", "emorynlp"])
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_stats)

    p = data_sub.add_parser("validate", help="read a corpus or JSONL file and list every problem found")
    _add_data_dir(p)
    p.add_argument("source", help="a corpus name (meld, emorynlp, ...) or a .jsonl file")
    p.add_argument("--split", nargs="+", default=None, help="splits to check (default: all)")
    p.add_argument("--labels", help="label set for a JSONL file (meld, emorynlp)")
    p.set_defaults(func=cmd_validate)

    p = data_sub.add_parser("export", help="write splits as a HF DatasetDict folder or as JSONL")
    _add_data_dir(p)
    p.add_argument("corpus")
    p.add_argument("--split", nargs="+", default=["train", "dev", "test"])
    p.add_argument("--format", choices=["hf", "jsonl"], default="hf")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

    spk = subparsers.add_parser("speakers", help="dataset-wide speaker registry")
    spk_sub = spk.add_subparsers(dest="speakers_command", required=True)
    p = spk_sub.add_parser("build", help="build the registry from training splits and save it as JSON")
    _add_data_dir(p)
    p.add_argument("--corpus", nargs="+", default=["meld", "emorynlp"])
    p.add_argument("--split", nargs="+", default=["train"])
    p.add_argument("--aliases", help="JSON file {name: canonical name} replacing the shipped alias table")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_speakers_build)
    p = spk_sub.add_parser("resolve", help="resolve names with a saved registry")
    p.add_argument("registry")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=cmd_speakers_resolve)


def cmd_prepare(args: argparse.Namespace) -> int:
    """Download (or find) and verify every split file."""
    from erc_llm.data.prepare import PrepareError, prepare

    try:
        results = prepare(args.corpus, args.data_dir, mirror=args.mirror, force=args.force)
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for r in results:
        print(f"{r.corpus:<10} {r.split:<6} {r.utterances:>6} utterances {r.dialogues:>5} dialogues  {r.action:<10} {r.path}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Print statistics of every split of the chosen corpora."""
    from erc_llm.data.stats import split_stats, stats_table

    tables = []
    for corpus in args.corpus:
        spec = CORPORA[corpus]
        rows = [split_stats(load_split(corpus, split, args.data_dir), spec.label_set.labels) for split in spec.splits]
        tables.append(rows)
    if args.json:
        print(json.dumps([r for rows in tables for r in rows], indent=2))
    else:
        print("\n\n".join(stats_table(rows) for rows in tables))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Load with skipping on and report every problem; exit 1 if any."""
    if args.source.endswith(".jsonl"):
        label_set = get_label_set(args.labels) if args.labels else None
        loads = [load_split(args.source, "custom", skip_invalid=True, label_set=label_set)]
    else:
        splits = args.split or list(CORPORA[args.source].splits)
        loads = [load_split(args.source, s, args.data_dir, skip_invalid=True) for s in splits]
    problems = 0
    for loaded in loads:
        print(f"{loaded.path}: {loaded.n_utterances} utterances in {len(loaded.dialogues)} dialogues, "
              f"{len(loaded.skipped)} invalid row(s)")
        for skipped in loaded.skipped:
            print(f"  {skipped}")
        problems += len(loaded.skipped)
    return 1 if problems else 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export splits to a DatasetDict folder or JSONL files."""
    loads = {s: load_split(args.corpus, s, args.data_dir) for s in args.split}
    out = Path(args.out)
    if args.format == "hf":
        from erc_llm.data.hf import to_dataset_dict

        to_dataset_dict(loads).save_to_disk(str(out))
    else:
        from erc_llm.data.loaders import write_jsonl

        out.mkdir(parents=True, exist_ok=True)
        for split, loaded in loads.items():
            write_jsonl(loaded.dialogues, out / f"{split}.jsonl")
    print(out)
    return 0


def cmd_speakers_build(args: argparse.Namespace) -> int:
    """Build and save the speaker registry."""
    from erc_llm.data.speakers import SpeakerRegistry

    aliases = json.loads(Path(args.aliases).read_text())["aliases"] if args.aliases else None
    sources = [load_split(c, s, args.data_dir).dialogues for c in args.corpus for s in args.split]
    registry = SpeakerRegistry.build(sources, aliases=aliases)
    registry.save(args.out)
    print(f"{len(registry)} speakers -> {args.out}")
    return 0


def cmd_speakers_resolve(args: argparse.Namespace) -> int:
    """Print the id of each name."""
    from erc_llm.data.speakers import SpeakerRegistry

    registry = SpeakerRegistry.load(args.registry)
    for name in args.names:
        print(f"{name}\t{registry.resolve(name)}")
    return 0


def run_guarded(func, args: argparse.Namespace) -> int:
    """Run a command, turning data errors into one clear line instead of a traceback."""
    try:
        return func(args)
    except DataFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
