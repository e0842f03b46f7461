"""`erc-llm prompts show|stats`: look at rendered prompts and their token lengths."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import yaml

DEFAULT_TOKENIZER_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _add_common(p: argparse.ArgumentParser) -> None:
    """Options shared by `show` and `stats`."""
    p.add_argument("--data-dir", help="corpus folder (default: $ERC_LLM_DATA_DIR or ~/.cache/erc_llm/data)")
    p.add_argument("--index-dir", help="root of cached retrieval indices (default: retrieval/indices/)")
    p.add_argument("--config", help="YAML with PromptConfig keys (top level or `prompt:`) and optional `retrieval:`")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a PromptConfig field, e.g. --set use_biography=true (repeatable)")
    p.add_argument("--all-sources", action="store_true",
                   help="turn on biography, emotion history and demonstrations")


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the `prompts` command group (`show`, `stats`)."""
    prompts = subparsers.add_parser("prompts", help="render prompts and measure their token lengths")
    sub = prompts.add_subparsers(dest="prompts_command", required=True)

    p = sub.add_parser("show", help="print the prompt of one utterance")
    p.add_argument("--corpus", default="meld")
    p.add_argument("--split", default="test")
    p.add_argument("--dialogue", required=True, help="dialogue id, e.g. meld/test/12 (or just 12)")
    p.add_argument("--index", type=int, required=True, help="0-based position of the utterance in the dialogue")
    p.add_argument("--model", help="render through this model's chat template (hub id, alias or path)")
    p.add_argument("--history", default="auto", choices=["auto", "gold", "predictions", "knn", "none"],
                   help="where the emotion history comes from (auto: gold on train; on dev/test --predictions if "
                        "given, else k-NN votes of training lines; gold test labels are never used)")
    p.add_argument("--predictions", help="JSONL of predictions (dialogue_id, utterance_index, pred) for the history")
    _add_common(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("stats", help="token length statistics (mean/p95/max) of prompts under several configs")
    p.add_argument("--corpus", nargs="+", default=["meld", "emorynlp"])
    p.add_argument("--split", default="test")
    p.add_argument("--model", default=DEFAULT_TOKENIZER_MODEL, help="tokenizer (and chat template) to count with")
    p.add_argument("--presets", nargs="+", default=None,
                   help="configs to compare (default: context +history +biography +demonstrations all)")
    p.add_argument("--max-dialogues", type=int, default=None, help="only the first N dialogues of each split")
    p.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    _add_common(p)
    p.set_defaults(func=cmd_stats)


def _settings(args: argparse.Namespace):
    """PromptConfig and RetrievalConfig from --config, --set and --all-sources."""
    from erc_llm.prompting.dataset import load_prompt_settings

    prompt, retrieval = load_prompt_settings(args.config)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    if args.all_sources:
        overrides = {"use_biography": True, "use_history": True, "use_demonstrations": True, **overrides}
    names = {f.name for f in dataclasses.fields(prompt)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise SystemExit(f"unknown PromptConfig field(s) {unknown}")
    return dataclasses.replace(prompt, **overrides), retrieval


def _tokenizer(model: str):
    """A tokenizer from a hub id, alias or path (resolved offline)."""
    from transformers import AutoTokenizer

    from erc_llm.offline_models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(model))


def cmd_show(args: argparse.Namespace) -> int:
    """Print one utterance's prompt."""
    from erc_llm.data.corpora import load_split
    from erc_llm.prompting.dataset import build_prompt_builder
    from erc_llm.prompting.preview import (
        find_dialogue,
        read_predictions,
        render_chat,
        render_messages_plain,
        split_histories,
    )

    config, retrieval = _settings(args)
    builder = build_prompt_builder(config, args.corpus, args.data_dir, args.index_dir, retrieval=retrieval,
                                   progress=True)
    dialogues = load_split(args.corpus, args.split, args.data_dir).dialogues
    dialogue = find_dialogue(dialogues, args.dialogue)
    if not 0 <= args.index < len(dialogue):
        raise SystemExit(f"{dialogue.id} has {len(dialogue)} utterances (index 0..{len(dialogue) - 1})")
    predictions = read_predictions(args.predictions) if args.predictions else None
    utt = dialogue[args.index]
    if config.layout == "packed":
        from erc_llm.prompting.packed import check_packed_template
        from erc_llm.prompting.preview import packed_chat

        check_packed_template(builder)
        gold = args.split == "train" and args.history in ("auto", "gold")
        labels = {u.key: u.label for d in dialogues for u in d if u.label} if gold else predictions
        messages = packed_chat(builder, dialogues, dialogue, args.index, labels)
        print(f"# {dialogue.id} [{args.index}] {utt.speaker}: packed chat up to this line; inline labels and history: "
              f"{'gold (train)' if gold else ('predictions' if predictions else 'none given (<label>)')}",
              file=sys.stderr)
        print(render_chat(messages, _tokenizer(args.model)) if args.model else render_messages_plain(messages))
        return 0
    histories, source = split_histories(builder, dialogues, args.history, predictions)
    messages = builder.messages(dialogue, args.index, histories[utt.key] if histories is not None else None)
    print(f"# {dialogue.id} [{args.index}] {utt.speaker} (speaker id {builder.registry.primary_id(utt)}); "
          f"history: {source}", file=sys.stderr)
    print(render_chat(messages, _tokenizer(args.model)) if args.model else render_messages_plain(messages))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Token length statistics per corpus and preset."""
    from erc_llm.data.corpora import load_split
    from erc_llm.prompting.dataset import build_prompt_builder, warm_sources
    from erc_llm.prompting.preview import (
        STATS_PRESETS,
        length_summary,
        packed_token_lengths,
        preset_configs,
        prompt_token_lengths,
        split_histories,
        with_config,
    )

    base, retrieval = _settings(args)
    tokenizer = _tokenizer(args.model)
    presets = preset_configs(base, args.presets or list(STATS_PRESETS))
    needs = {k: any(getattr(c, k) for c in presets.values()) for k in ("use_biography", "use_demonstrations")}
    rows = []
    for corpus in args.corpus:
        # One builder with every needed source; each preset shares its retriever.
        full = dataclasses.replace(base, **needs)
        builder = build_prompt_builder(full, corpus, args.data_dir, args.index_dir, retrieval=retrieval,
                                       progress=True)
        dialogues = load_split(corpus, args.split, args.data_dir).dialogues[: args.max_dialogues]
        warm_sources(builder, dialogues)
        knn = getattr(builder.demonstrations, "knn_labels", None)
        predictions = knn(dialogues) if knn is not None and args.split != "train" else None
        for name, config in presets.items():
            variant = with_config(builder, config)
            if config.layout == "packed":
                per_line, per_dialogue = packed_token_lengths(variant, dialogues, tokenizer)
                summary = {**length_summary(per_line), "max": max(per_dialogue, default=0)}
            else:
                histories, _ = split_histories(variant, dialogues, "auto", predictions)
                summary = length_summary(prompt_token_lengths(variant, dialogues, tokenizer, histories))
            rows.append({"corpus": corpus, "split": args.split, "config": name, **summary})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"Prompt lengths in {args.model} tokens (chat template + generation prompt; "
          f"past_window={base.past_window}, k={base.num_demonstrations}, history_window={base.history_window}; "
          f"packed rows: mean = tokens per line of a dialogue's chat, max = longest dialogue chat)\n")
    print("| corpus | split | config | n | mean | p95 | max |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['corpus']} | {r['split']} | {r['config']} | {r['n']} | {r['mean']:.1f} | {r['p95']:.0f} | "
              f"{r['max']} |")
    return 0
