"""Labelling throughput on one corpus split: vLLM vs a naive transformers `generate` loop vs transformers
label scoring, in one run on the same prompts; with --packed also the dialogue-packed layout (one chat per
dialogue, each line's prompt a prefix of the next: vLLM with prefix caching, transformers with a kept KV cache).

    .venv/bin/python evaluation/bench_labelling.py --corpus meld --split test [--adapter runs/sft/x] \
        [--naive-limit 300] [--packed] [--model Qwen/Qwen2.5-Coder-0.5B-Instruct]

Prints utterances/s and prompt tokens/s per method, the engine start time, how often each method's answer
is a valid label, the agreement between methods, and the command to rerun. The naive loop (one prompt at a
time, unconstrained greedy `generate`) is timed on the first --naive-limit prompts (it is the slow baseline);
the other two label the whole split.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from datetime import UTC, datetime

from erc_llm.provenance import machine

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def build_prompts(args):
    """Prompts for every utterance of the split (context-only config unless an adapter brings its own)."""
    from erc_llm.data import CORPORA, load_split
    from erc_llm.labelling.config import LabelConfig
    from erc_llm.labelling.run import prompt_settings_for
    from erc_llm.prompting.dataset import build_prompt_builder

    cfg = LabelConfig(corpus=args.corpus, split=args.split, adapter=args.adapter, backend="hf")
    prompt_cfg, retrieval_cfg = prompt_settings_for(cfg)
    if prompt_cfg.needs_rounds:
        prompt_cfg.eval_history_source = "none"  # one batch over all prompts: history-free for the benchmark
    builder = build_prompt_builder(prompt_cfg, args.corpus, None, retrieval=retrieval_cfg)
    dialogues = load_split(args.corpus, args.split).dialogues[: args.max_dialogues]
    examples = builder.unconditioned_examples(dialogues)
    return examples, CORPORA[args.corpus].label_set.labels


def build_packed(args):
    """A packed-layout builder (context only: dialogues are independent, so step r of every dialogue is one batch)
    and the split's dialogues."""
    from erc_llm.data import load_split
    from erc_llm.prompting import PromptConfig
    from erc_llm.prompting.dataset import build_prompt_builder

    config = PromptConfig(template="erc_packed.j2", layout="packed", max_line_chars=200)
    dialogues = load_split(args.corpus, args.split).dialogues[: args.max_dialogues]
    return build_prompt_builder(config, args.corpus, None), dialogues


def label_packed(dialogues, builder, engine) -> dict:
    """{(dialogue_id, index): predicted label} from the packed labelling loop."""
    from erc_llm.labelling.packed import label_dialogues_packed

    return {item.example.key: item.pred for item in label_dialogues_packed(dialogues, builder, engine, progress=False)}


def packed_prompt_tokens(tokenizer, builder, dialogues) -> int:
    """Tokens of every step's whole chat-templated prompt (what the model would read without any prefix reuse)."""
    from erc_llm.prompting.packed import packed_messages
    from erc_llm.prompting.templates import chat_prompt_ids

    total = 0
    for d in dialogues:
        labels = [builder.label_set.labels[0]] * len(d)
        for i in range(len(d)):
            total += len(chat_prompt_ids(tokenizer, packed_messages(builder, d, 0, i + 1, labels[:i], None)))
    return total


def full_prompt_tokens(tokenizer, examples) -> int:
    """Tokens of every chat-templated prompt (transformers 5 returns a dict unless return_dict=False)."""
    return sum(len(tokenizer.apply_chat_template(e.messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=False)) for e in examples)


def naive_generate(model, tokenizer, examples, labels, limit: int) -> tuple[float, list[str], int]:
    """One prompt at a time, unconstrained greedy generation of a few tokens; returns seconds, answers, tokens."""
    import torch

    answers, tokens = [], 0
    start = time.perf_counter()
    for ex in examples[:limit]:
        ids = tokenizer.apply_chat_template(ex.messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        tokens += ids["input_ids"].shape[1]
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip().lower()
        answers.append(next((label for label in labels if text.startswith(label)), text))
    return time.perf_counter() - start, answers, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="meld")
    parser.add_argument("--split", default="test")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--naive-limit", type=int, default=300)
    parser.add_argument("--hf-batch-size", type=int, default=16)
    parser.add_argument("--vllm-batch-size", type=int, default=512)
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    parser.add_argument("--model", default=MODEL, help="base model (hub id, alias or folder)")
    parser.add_argument("--packed", action="store_true",
                        help="also label the split in the packed layout (vLLM prefix caching, HF kept KV cache)")
    parser.add_argument("--skip-hf-scoring", action="store_true", help="leave out per-utterance HF label scoring")
    parser.add_argument("--skip-hf-packed", action="store_true", help="leave out packed HF labelling (KV cache)")
    parser.add_argument("--max-dialogues", type=int, default=None, help="only the first N dialogues (smoke runs)")
    parser.add_argument("--key-prefix", default="", help="prefix of the result keys (e.g. a model tag)")
    args = parser.parse_args()
    model_name = args.model

    examples, labels = build_prompts(args)
    n = len(examples)
    gold = [e.label for e in examples]
    results: dict[str, dict] = {}

    # ---- naive transformers generate loop ------------------------------------------------------------------
    from erc_llm.labelling.hf_engine import HFEngine

    hf = HFEngine(model_name, labels, adapter=args.adapter, batch_size=args.hf_batch_size)
    seconds, answers, tokens = naive_generate(hf.model, hf.tokenizer, examples, labels, args.naive_limit)
    results["naive_generate"] = {"utterances": len(answers), "seconds": seconds, "prompt_tokens": tokens,
                                 "valid": sum(a in labels for a in answers) / len(answers), "preds": answers}

    # ---- transformers label scoring (one forward pass per prompt, batched) -----------------------------------
    if not args.skip_hf_scoring:
        start = time.perf_counter()
        hf.scorer.prompt_tokens = 0
        scores = hf.score([e.messages for e in examples])
        # prompt_tokens: the whole chat-templated prompts (the scorer itself encodes a batch's shared prefix once)
        results["hf_label_scoring"] = {"utterances": n, "seconds": time.perf_counter() - start,
                                       "prompt_tokens": full_prompt_tokens(hf.tokenizer, examples), "valid": 1.0,
                                       "preds": [max(s, key=s.get) for s in scores]}
    del hf

    # ---- vLLM (structured choice, prefix caching) ----------------------------------------------------------------
    from erc_llm.labelling.engines import VLLMEngine

    start = time.perf_counter()
    engine = VLLMEngine(model_name, labels, adapter=args.adapter, engine_args={"max_model_len": 4096})
    started = time.perf_counter()
    preds = []
    for i in range(0, n, args.vllm_batch_size):
        batch = engine.score([e.messages for e in examples[i:i + args.vllm_batch_size]])
        preds += [max(s, key=s.get) for s in batch]
    done = time.perf_counter()
    vtokens = full_prompt_tokens(engine.llm.get_tokenizer(), examples)
    results["vllm"] = {"utterances": n, "seconds": done - started, "engine_start_seconds": started - start,
                       "prompt_tokens": vtokens, "valid": sum(p in labels for p in preds) / n, "preds": preds}

    # ---- packed layout: vLLM (prefix cache) and transformers (kept KV cache), same model ----------------------
    if args.packed:
        packed_builder, dialogues = build_packed(args)
        key_of = [(e.dialogue_id, e.index) for e in examples]
        started = time.perf_counter()
        items = label_packed(dialogues, packed_builder, engine)
        seconds = time.perf_counter() - started
        preds = [items[k] for k in key_of]
        results["vllm_packed"] = {"utterances": n, "seconds": seconds, "engine_start_seconds": 0.0,
                                  "prompt_tokens": packed_prompt_tokens(engine.llm.get_tokenizer(), packed_builder,
                                                                        dialogues),
                                  "valid": sum(p in labels for p in preds) / n, "preds": preds}
    del engine
    if args.packed and not args.skip_hf_packed:
        hf = HFEngine(model_name, labels, adapter=args.adapter, batch_size=args.hf_batch_size)
        started = time.perf_counter()
        items = label_packed(dialogues, packed_builder, hf)
        seconds = time.perf_counter() - started
        preds = [items[k] for k in key_of]
        results["hf_packed_kv_cache"] = {"utterances": n, "seconds": seconds, "prompt_tokens":
                                         results["vllm_packed"]["prompt_tokens"], "valid": 1.0, "preds": preds}

    # ---- report ------------------------------------------------------------------------------------------------
    from erc_llm.evaluation.metrics import compute_metrics

    print(f"# Labelling throughput, {args.corpus} {args.split} ({n} utterances), {model_name}"
          f"{' + ' + args.adapter if args.adapter else ''}")
    print(f"date: {datetime.now(UTC).isoformat(timespec='seconds')}; machine: {machine()}; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    print("| method | utterances timed | seconds | utt/s | prompt tok/s | valid labels | W-F1 on timed |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        timed_gold = gold[: r["utterances"]]
        wf1 = compute_metrics(timed_gold, [p if p in labels else labels[0] for p in r["preds"]], labels)["weighted_f1"]
        print(f"| {name} | {r['utterances']} | {r['seconds']:.1f} | {r['utterances'] / r['seconds']:.2f} | "
              f"{r['prompt_tokens'] / r['seconds']:.0f} | {100 * r['valid']:.1f}% | {100 * wf1:.2f} |")
    naive_rate = results["naive_generate"]["utterances"] / results["naive_generate"]["seconds"]
    vllm_rate = n / results["vllm"]["seconds"]
    print(f"vLLM engine start: {results['vllm']['engine_start_seconds']:.1f} s (not in its utt/s)")
    print(f"speed-up vLLM vs naive generate loop: {vllm_rate / naive_rate:.1f}x")
    if "hf_label_scoring" in results:
        print(f"vLLM vs HF label scoring: {vllm_rate / (n / results['hf_label_scoring']['seconds']):.1f}x")
        agree = sum(a == b for a, b in zip(results["vllm"]["preds"], results["hf_label_scoring"]["preds"])) / n
        print(f"vLLM and HF label scoring agree on {100 * agree:.1f}% of utterances")
    if args.packed:
        packed_rate = n / results["vllm_packed"]["seconds"]
        print(f"packed vLLM: {packed_rate:.2f} utt/s = {packed_rate / naive_rate:.1f}x the naive generate loop, "
              f"{packed_rate / vllm_rate:.1f}x per-utterance vLLM")
        if "hf_packed_kv_cache" in results:
            hf_packed = results["hf_packed_kv_cache"]
            agree = sum(a == b for a, b in zip(results["vllm_packed"]["preds"], hf_packed["preds"])) / n
            print(f"packed HF (KV cache): {n / hf_packed['seconds']:.2f} utt/s; packed vLLM and packed HF agree on "
                  f"{100 * agree:.1f}% of utterances")
    command = shlex.join(["python", "evaluation/bench_labelling.py", *sys.argv[1:]])
    print("command: " + command)
    if args.out:
        for r in results.values():
            r.pop("preds")
            r["utterances_per_second"] = round(r["utterances"] / r["seconds"], 3)
        meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "model": model_name, "adapter": args.adapter,
                "machine": machine(), "command": command,
                "load_average_at_end": round(os.getloadavg()[0], 2)}
        existing = {}
        if os.path.exists(args.out):
            with open(args.out) as handle:
                existing = json.load(handle)
        for name, r in results.items():
            existing[f"{args.key_prefix}{name}"] = {**r, **meta}
        with open(args.out, "w") as handle:
            json.dump(existing, handle, indent=2)


if __name__ == "__main__":
    main()
