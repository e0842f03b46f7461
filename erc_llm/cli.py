"""The `erc-llm` command line: one entry point, command groups registered by the library's modules."""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that add command groups; each exposes `register_cli(subparsers)` and keeps heavy imports lazy.
COMMAND_MODULES = (
    "erc_llm.data.cli",
    "erc_llm.offline_models",
    "erc_llm.merge",
    "erc_llm.retrieval.cli",
    "erc_llm.prompting.cli",
    "erc_llm.labelling.cli",
    "erc_llm.baseline.cli",
    "erc_llm.evaluation.compare",
    "erc_llm.training.ablate",
    "erc_llm.training.staged",
    "erc_llm.pipeline",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(prog="erc-llm", description="Emotion recognition in conversation with LLMs.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the chosen command."""
    from erc_llm.data.cli import run_guarded

    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "passthrough", False):
        args.options = list(getattr(args, "options", None) or []) + rest  # e.g. `label`: TrlParser options
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return run_guarded(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
