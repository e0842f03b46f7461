"""`erc-llm data ...` and `erc-llm speakers ...` commands; `run_guarded` turns wrong input into one error line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from erc_llm.data.corpora import CORPORA
from erc_llm.data.errors import DataFormatError
from erc_llm.data.labels import LABEL_SETS
from erc_llm.data.sources import DECLARE_HINT, DataSource, infer_label_set, resolve_source

SOURCE_HELP = ("a corpus name (meld, emorynlp, emorynlp-csv), a MELD/EmoryNLP-style .csv, a .jsonl file, or a "
               "folder of train/dev/test files")
LABELS_HELP = "label set: meld, emorynlp, iemocap, a list happy,sad,angry,neutral, or a labels .txt/.json file"


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
    p.add_argument("--corpus", nargs="+", default=["meld", "emorynlp"], help=f"one or more: {SOURCE_HELP}")
    p.add_argument("--labels", help=LABELS_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_stats)

    p = data_sub.add_parser("validate", help="read a corpus, file or folder and list every problem found")
    _add_data_dir(p)
    p.add_argument("source", help=SOURCE_HELP)
    p.add_argument("--split", nargs="+", default=None, help="splits to check (default: all)")
    p.add_argument("--labels", help=LABELS_HELP + " (default: the one the data declares)")
    p.set_defaults(func=cmd_validate)

    p = data_sub.add_parser("export", help="write splits as a HF DatasetDict folder or as JSONL")
    _add_data_dir(p)
    p.add_argument("corpus", help=SOURCE_HELP)
    p.add_argument("--split", nargs="+", default=None, help="splits to export (default: all)")
    p.add_argument("--labels", help=LABELS_HELP)
    p.add_argument("--format", choices=["hf", "jsonl"], default="hf")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

    spk = subparsers.add_parser("speakers", help="dataset-wide speaker registry")
    spk_sub = spk.add_subparsers(dest="speakers_command", required=True)
    p = spk_sub.add_parser("build", help="build the registry from training splits and save it as JSON")
    _add_data_dir(p)
    p.add_argument("--corpus", nargs="+", default=["meld", "emorynlp"], help=f"one or more: {SOURCE_HELP}")
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
    from erc_llm.data.prepare import prepare

    results = prepare(args.corpus, args.data_dir, mirror=args.mirror, force=args.force)
    for r in results:
        print(f"{r.corpus:<10} {r.split:<6} {r.utterances:>6} utterances {r.dialogues:>5} dialogues  {r.action:<10} {r.path}")
    return 0


def load_all(source: DataSource, splits: list[str] | None = None, skip_invalid: bool = False):
    """(label set, {split: LoadedSplit}) of a source: declared labels, else inferred from train (or all splits)."""
    names = splits or source.splits
    if source.label_set is not None:
        return source.label_set, {s: source.load(s, skip_invalid=skip_invalid) for s in names}
    loads = {s: source.load(s, skip_invalid=skip_invalid) for s in names}
    basis = [loads["train"]] if "train" in loads else list(loads.values())
    label_set = source.label_set_for([d for loaded in basis for d in loaded.dialogues])
    return label_set, {s: source.load(s, label_set=label_set, skip_invalid=skip_invalid) for s in names}


def cmd_stats(args: argparse.Namespace) -> int:
    """Print statistics of every split of the chosen sources."""
    from erc_llm.data.stats import split_stats, stats_table

    tables = []
    for corpus in args.corpus:
        label_set, loads = load_all(resolve_source(corpus, labels=args.labels, data_dir=args.data_dir))
        tables.append([split_stats(loaded, label_set.labels) for loaded in loads.values()])
    if args.json:
        print(json.dumps([r for rows in tables for r in rows], indent=2))
    else:
        print("\n\n".join(stats_table(rows) for rows in tables))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Load with skipping on and report every problem; exit 1 if any.

    Without a declared label set every label is accepted, so the labels found are listed for the user to check.
    """
    source = resolve_source(args.source, labels=args.labels, data_dir=args.data_dir)
    splits = args.split or source.splits
    loads = [source.load(s, skip_invalid=True) for s in splits]
    problems = 0
    found: Counter = Counter()
    for loaded in loads:
        print(f"{loaded.path}: {loaded.n_utterances} utterances in {len(loaded.dialogues)} dialogues, "
              f"{len(loaded.skipped)} invalid row(s)")
        for skipped in loaded.skipped:
            print(f"  {skipped}")
        problems += len(loaded.skipped)
        found.update(u.label for u in loaded.utterances() if u.label is not None)
    if source.label_set is not None:
        print(f"labels: {source.label_set.name} {list(source.label_set.labels)} (from {source.label_origin})")
    elif not found:
        print("labels: none in the data (unlabelled dialogues can be labelled with `erc-llm label`)")
    else:
        listing = ", ".join(f"{label} ({n})" for label, n in found.most_common())
        fits = infer_label_set(found, source.name, source.default_set())
        known = f" (all in the known set {fits.name!r})" if fits.name in LABEL_SETS else ""
        print(f"labels: none declared, so none was checked; found {len(found)}{known}: {listing}. To check them, "
              f"{DECLARE_HINT}")
    return 1 if problems else 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export splits to a DatasetDict folder or JSONL files."""
    source = resolve_source(args.corpus, labels=args.labels, data_dir=args.data_dir)
    label_set, loads = load_all(source, args.split)
    out = Path(args.out)
    if args.format == "hf":
        from erc_llm.data.hf import to_dataset_dict

        to_dataset_dict(loads).save_to_disk(str(out))
    else:
        from erc_llm.data.loaders import write_jsonl

        out.mkdir(parents=True, exist_ok=True)
        for split, loaded in loads.items():
            write_jsonl(loaded.dialogues, out / f"{split}.jsonl", labels=label_set.labels)  # declares its labels
    print(out)
    return 0


def cmd_speakers_build(args: argparse.Namespace) -> int:
    """Build and save the speaker registry."""
    from erc_llm.data.speakers import SpeakerRegistry

    aliases = None
    if args.aliases:
        try:
            aliases = json.loads(Path(args.aliases).read_text(encoding="utf-8"))["aliases"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataFormatError(args.aliases, None, f'expected a JSON object {{"aliases": {{name: canonical}}}}: {exc}') from None
    sources = [resolve_source(c, data_dir=args.data_dir).load(s).dialogues for c in args.corpus for s in args.split]
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
    """Run a command; wrong input becomes one `error: <file>, row N: what is wrong` line and exit 2.

    Set ERC_LLM_DEBUG=1 to get the traceback instead.
    """
    from erc_llm.data.prepare import PrepareError

    if os.environ.get("ERC_LLM_DEBUG"):
        return func(args)
    try:
        return func(args)
    except (DataFormatError, PrepareError, ValueError, KeyError, FileNotFoundError, IsADirectoryError,
            NotADirectoryError, PermissionError) as exc:
        hint = " (ERC_LLM_DEBUG=1 shows where)" if type(exc) in (ValueError, KeyError) else ""
        print(f"error: {one_line(exc)}{hint}", file=sys.stderr)
        return 2


def guarded_main(main: Callable[[], object]) -> None:
    """Run a recipe's `main()` as `run_guarded` runs a command: wrong input is one error line and exit 2."""
    sys.exit(run_guarded(lambda _args: main() or 0, argparse.Namespace()))


def one_line(exc: BaseException) -> str:
    """An exception as one line (KeyError's quotes dropped, newlines folded)."""
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        message = f"{exc.filename}: {exc.strerror.lower()}"
    message = " ".join(str(message).split())
    return message or type(exc).__name__
