"""`erc-llm baseline ...` commands: train a recipe, inspect a feature store, print the reference figures."""

from __future__ import annotations

import argparse
import json


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the `baseline` command group (heavy imports stay inside the commands)."""
    baseline = subparsers.add_parser("baseline", help="encoder-fusion baseline: train, feature stores, reference")
    sub = baseline.add_subparsers(dest="baseline_command", required=True)

    p = sub.add_parser(
        "train", help="train and evaluate a recipe (same as `accelerate launch recipes/baseline.py ...`)",
        description="erc-llm baseline train --config recipes/encoder-fusion/<variant>.yaml [-- --key value ...]",
    )
    p.add_argument("--config", required=True, help="recipe YAML (recipes/encoder-fusion/<variant>.yaml)")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="after `--`: --key value pairs overriding the YAML")
    p.set_defaults(func=cmd_train)

    features = sub.add_parser("features", help="feature stores")
    features_sub = features.add_subparsers(dest="features_command", required=True)
    p = features_sub.add_parser("info", help="modalities, sizes and entry counts of a feature store")
    p.add_argument("store", help="feature-store folder (with manifest.json)")
    p.set_defaults(func=cmd_features_info)

    p = sub.add_parser("reference", help="utterance-only MiniLM + logistic regression on a corpus (dev/test)")
    p.add_argument("--corpus", required=True)
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=cmd_reference)


def cmd_train(args: argparse.Namespace) -> int:
    """Run the recipe steps: seed, data, model, trainer, train, save, eval."""
    from erc_llm.baseline.config import parse_baseline_config
    from erc_llm.baseline.train import train_and_evaluate

    overrides = [part for part in args.overrides if part != "--"]
    train_and_evaluate(*parse_baseline_config(["--config", args.config, *overrides]))
    return 0


def cmd_features_info(args: argparse.Namespace) -> int:
    """Print a feature store's manifest with entry counts."""
    from erc_llm.baseline.features import FeatureStore

    store = FeatureStore.open(args.store)
    summary = {name: {**entry.to_dict(), "entries": len(store.vectors(name))} for name, entry in store.modalities.items()}
    print(json.dumps(summary, indent=2))
    return 0


def cmd_reference(args: argparse.Namespace) -> int:
    """Print the utterance-only reference figures."""
    from erc_llm.baseline.reference import main

    return main(["--corpus", args.corpus, *(["--data-dir", args.data_dir] if args.data_dir else [])])
