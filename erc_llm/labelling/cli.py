"""`erc-llm label`: label dialogues with a (fine-tuned) LLM; every LabelConfig field is a flag or YAML key."""

from __future__ import annotations

import argparse
import shlex
import sys


def parse_label_config(argv: list[str]):
    """LabelConfig from `--config recipe.yaml` plus `--field value` overrides (unknown keys are errors)."""
    from trl import TrlParser

    from erc_llm.labelling.config import LabelConfig

    (cfg,) = TrlParser((LabelConfig,)).parse_args_and_config(argv)
    cfg.command_line_keys = command_line_keys(argv)
    return cfg


def command_line_keys(argv: list[str]) -> set[str]:
    """Field names given as `--name value` / `--name=value` on the command line (not from --config)."""
    keys = set()
    for token in argv:
        if token.startswith("--") and token != "--config":
            keys.add(token[2:].split("=", 1)[0].replace("-", "_"))
    return keys - {"config"}


def cmd_label(args: argparse.Namespace) -> int:
    """Run a labelling job and print the run folder."""
    from erc_llm.labelling.run import run_labelling

    cfg = parse_label_config(args.options)
    out = run_labelling(cfg, command="erc-llm label " + shlex.join(args.options))
    print(out)
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add `erc-llm label`."""
    p = subparsers.add_parser(
        "label",
        help="label dialogues (corpus split or JSONL) with vLLM, transformers or a vllm serve endpoint",
        description="Options: --config recipes/<model>/label/<x>.yaml and/or any LabelConfig field as --name value "
                    "(see recipes/label.py --help).",
        add_help=False,
    )
    p.set_defaults(func=cmd_label, passthrough=True, options=[])


if __name__ == "__main__":
    sys.exit(cmd_label(argparse.Namespace(options=sys.argv[1:])))
