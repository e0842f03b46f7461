"""The `erc-llm` command line: one entry point, command groups registered by the library's modules."""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that add command groups; each exposes `register_cli(subparsers)` and keeps heavy imports lazy.
COMMAND_MODULES = (
    "erc_llm.data.cli",
    "erc_llm.evaluation.compare",
    "erc_llm.labelling.cli",
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

    args = build_parser().parse_args(argv)
    return run_guarded(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
