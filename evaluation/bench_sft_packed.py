"""Training throughput: the dialogue-packed layout vs the per-utterance recipe, same model, data budget and machine.

Runs `recipes/sft.py` once per arm, one after the other, with only the layout changed (all: context + corpus emotion
history, sqrt-inverse class weights, LoRA on the top layers, bf16 frozen base, no evaluation during training):

* per_utterance: one prompt per training line (2 previous lines of context, history in the prompt), `--utterances`
  lines drawn stratified from the training split, batch 8;
* packed: whole training dialogues with about `--utterances` lines, one chat per dialogue, batch 4 dialogues in
  one flat padding-free sequence (the recorded recipes);
* packed_accumulated: the same dialogues and the same optimizer steps, one dialogue per micro-batch and 4
  accumulation steps (the loss is the mean over the step's answer tokens either way, see `ERCSFTTrainer`), so no
  attention work is spent across dialogues;
* packed_self_predictions: packed_accumulated with `--packed_inline_self_predictions 1` (one more forward pass per
  micro-batch, without gradients, for the model's own inline labels);
* packed_transcript, packed_transcript_self_predictions: the same two with the transcript template
  (erc_packed_transcript.j2: the lines as one assistant transcript, each followed by its label, and a shorter
  header; ~26 tokens per line instead of ~43);
* packed_transcript_unbalanced: packed_transcript without `balance_processes` (the plain seeded random order: the
  processes' shares of a step are not evened out, so one waits for the other at every optimizer step);
* packed_transcript_grouped_steps: packed_transcript with `group_steps_by_length 16` (a step's 4 dialogues are of
  similar length, so the processes finish it together; this changes which dialogues share a step);
* packed_transcript_grouped: transcript turns, 4 dialogues of similar length per micro-batch as one padded batch
  (length-grouped sampling, attention mask, no attention across dialogues): fewer, wider matrix products.

`--processes N` runs every arm as N torchrun processes (gloo, one thread each, `--threads` ignored) with the same
examples per optimizer step: the per-process batch, or else the accumulation steps, divided by N.

With `--repeats N` the arms run N times in turn (A B C A B C ...) so that a change of machine load hits every arm;
the JSON keeps each arm's median run and all runs' rates.

Labelled utterances per second = lines trained / `trainer.train()` wall seconds (from each run's
run_summary.json); also after the first optimizer step (lines of steps 2.. / seconds from the end of step 1 to the
last step's end: run_summary's train_step_end_seconds and train_step_lines), the rate without the warm-up that
the first step pays, which weighs 1 of 11 steps here but nothing in a recorded run of hundreds of steps. Writes
evaluation/bench_sft_packed.json (every arm) or `--out`; `--headline-from <out> [--headline-arm packed_transcript]`
writes the issue's headline file evaluation/bench_sft_packed.json from a finished `--out` (per_utterance and packed).

    python evaluation/bench_sft_packed.py --model Qwen/Qwen2.5-Coder-0.5B-Instruct --utterances 400 --threads 2 \
        [--repeats 2] [--processes 2 --out evaluation/bench_sft_packed_2processes.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from erc_llm.provenance import machine

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "evaluation" / "bench_sft_packed.json"
COMMON = [
    "--corpus", "meld", "--use_history", "true", "--history_window", "5", "--class_weighting", "sqrt_inverse",
    "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
    "--early_stopping_patience", "None", "--test_split", "None", "--eval_subsample", "8", "--num_train_epochs", "1",
    "--learning_rate", "3e-4", "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--logging_steps", "5",
    "--seed", "42", "--subsample_seed", "0",
    # throughput of the layouts, not of a training-content choice: no inline label noise (the per-utterance layout
    # has no inline labels; the recorded packed recipes' noise would make its arm fail to parse)
    "--packed_label_noise", "0",
]
LAYOUTS = {
    "per_utterance": ["--layout", "per_utterance", "--template", "erc_instruct.j2", "--past_window", "2",
                      "--max_line_chars", "100", "--per_device_train_batch_size", "8",
                      "--gradient_accumulation_steps", "1", "--batching", "length_grouped",
                      "--max_length", "768", "--train_subsample_strategy", "stratified"],
    "packed": ["--layout", "packed", "--template", "erc_packed.j2", "--max_line_chars", "200",
               "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--batching", "padding_free",
               "--max_length", "1536"],
    "packed_accumulated": ["--layout", "packed", "--template", "erc_packed.j2", "--max_line_chars", "200",
                           "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "4",
                           "--batching", "padding_free", "--max_length", "1536"],
}
LAYOUTS["packed_self_predictions"] = [*LAYOUTS["packed_accumulated"], "--packed_inline_self_predictions", "1"]
LAYOUTS["packed_transcript"] = [("erc_packed_transcript.j2" if v == "erc_packed.j2" else v)
                                for v in LAYOUTS["packed_accumulated"]]
LAYOUTS["packed_transcript_unbalanced"] = [*LAYOUTS["packed_transcript"], "--balance_processes", "false"]
LAYOUTS["packed_transcript_grouped_steps"] = [*LAYOUTS["packed_transcript"], "--group_steps_by_length", "16"]
LAYOUTS["packed_transcript_self_predictions"] = [*LAYOUTS["packed_transcript"], "--packed_inline_self_predictions", "1"]
LAYOUTS["packed_transcript_grouped"] = ["--layout", "packed", "--template", "erc_packed_transcript.j2",
                                        "--max_line_chars", "200", "--per_device_train_batch_size", "4",
                                        "--gradient_accumulation_steps", "1", "--batching", "length_grouped",
                                        "--max_length", "1536"]


def per_process(overrides: list[str], processes: int) -> list[str]:
    """The arm's overrides for `processes` data-parallel processes, same examples per optimizer step."""
    out = list(overrides)
    batch = out.index("--per_device_train_batch_size") + 1
    if int(out[batch]) % processes == 0:
        out[batch] = str(int(out[batch]) // processes)
        return out
    if "--gradient_accumulation_steps" in out:
        accumulation = out.index("--gradient_accumulation_steps") + 1
        if int(out[accumulation]) % processes == 0:
            out[accumulation] = str(int(out[accumulation]) // processes)
            return out
    raise SystemExit(f"{processes} processes do not divide the arm's batch or accumulation steps: {overrides}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="Qwen/Qwen2.5-Coder-0.5B-Instruct")
    p.add_argument("--base_config", default="recipes/qwen2.5-coder-0.5b/sft/meld_packed.yaml",
                   help="Recipe the model/LoRA settings come from (layout keys are overridden).")
    p.add_argument("--utterances", type=int, default=400)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--processes", type=int, default=1,
                   help="torchrun processes per arm (one thread each); the same examples per optimizer step")
    p.add_argument("--repeats", type=int, default=1, help="run the arms this many times in turn; report medians")
    p.add_argument("--arms", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS),
                   help="run only these arms (the default --out is written only when every arm ran; give --out for a subset)")
    p.add_argument("--ddp_find_unused_parameters", choices=["recipe", "true", "false"], default="recipe",
                   help="with --processes > 1: DDP's per-step search for parameters without gradients, for every arm "
                        "('recipe': the base recipe's setting)")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--headline-from", metavar="JSON",
                   help="write no benchmark: take this earlier --out file and write the packed-prompts issue's "
                        f"headline file {OUT.relative_to(REPO)} from it (per_utterance and packed = --headline-arm)")
    p.add_argument("--headline-arm", default="packed_transcript", choices=list(LAYOUTS))
    return p.parse_args()


def write_headline(source: Path, arm: str) -> dict:
    """{"per_utterance": ..., "packed": the arm's figures, speed-ups} from a finished benchmark's JSON."""
    results = json.loads(source.read_text())
    if "per_utterance" not in results or arm not in results:
        raise SystemExit(f"{source}: needs the per_utterance and {arm} arms, has {sorted(results)}")
    key = "speedup" if arm == "packed" else f"speedup_{arm}"
    headline = {
        "per_utterance": results["per_utterance"], "packed": {**results[arm], "arm": arm},
        "speedup": results[key], "speedup_after_first_step": results.get(f"speedup_after_first_step_{arm}"),
        "meta": {**results["meta"], "source": str(source), "benchmark_command": results["meta"].get("command"),
                 "command": "python evaluation/bench_sft_packed.py " + shlex.join(sys.argv[1:])},
    }
    OUT.write_text(json.dumps(headline, indent=2) + "\n")
    return headline


def run(layout: str, args: argparse.Namespace, out_dir: Path) -> dict:
    """One recipes/sft.py run; its run_summary.json plus wall time."""
    launch = [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if args.processes > 1:
        launch += ["-m", "torch.distributed.run", "--nproc_per_node", str(args.processes), "--master_port", "29561"]
        env.update(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1")
    cmd = [*launch, str(REPO / "recipes" / "sft.py"), "--config", args.base_config,
           "--model_name_or_path", args.model, "--output_dir", str(out_dir), "--train_subsample", str(args.utterances),
           *COMMON, *per_process(LAYOUTS[layout], args.processes)]
    if args.processes > 1 and args.ddp_find_unused_parameters != "recipe":
        cmd += ["--ddp_find_unused_parameters", args.ddp_find_unused_parameters]
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{layout} run failed:\n{result.stderr[-3000:]}")
    summary = json.loads((out_dir / "run_summary.json").read_text())
    return {
        "utterances": summary["train_examples"], "seconds": summary["train_seconds"],
        "utterances_per_second": round(summary["train_examples"] / summary["train_seconds"], 3),
        "utterances_per_second_after_first_step": summary.get("train_lines_per_second_after_first_step"),
        "first_step_seconds": (summary.get("train_step_end_seconds") or [None])[0],
        "steps": summary["train_steps"], "ddp_find_unused_parameters": summary.get("ddp_find_unused_parameters"),
        "mean_tokens_per_utterance": summary.get("mean_tokens_per_example"),
        "train_tokens_per_second": summary.get("train_tokens_per_second"),
        "process_wall_seconds": round(time.perf_counter() - started, 1), "command": shlex.join(cmd),
    }


def main() -> None:
    args = parse_args()
    if args.headline_from:
        headline = write_headline(Path(args.headline_from), args.headline_arm)
        print(f"{args.headline_arm} vs per utterance: {headline['speedup']}x whole run, "
              f"{headline['speedup_after_first_step']}x after the first step -> {OUT}")
        return
    runs: dict[str, list[dict]] = {layout: [] for layout in LAYOUTS}
    with tempfile.TemporaryDirectory(prefix="bench-sft-packed-") as tmp:
        for repeat in range(args.repeats):
            for layout in args.arms:
                r = run(layout, args, Path(tmp) / f"{layout}-{repeat}")
                runs[layout].append(r)
                print(f"{layout:>18} #{repeat + 1}: {r['utterances']} utterances in {r['seconds']} s = "
                      f"{r['utterances_per_second']} utt/s ({r['mean_tokens_per_utterance']} tokens per utterance); "
                      f"after the first step ({r['first_step_seconds']} s): {r['utterances_per_second_after_first_step']}"
                      " utt/s", flush=True)
    if set(args.arms) != set(LAYOUTS) and args.out == str(OUT):
        print(f"only {args.arms} ran: {args.out} not written (it needs every arm; give --out for a subset)")
        return
    results: dict = {}
    for layout in args.arms:
        ranked = sorted(runs[layout], key=lambda r: r["utterances_per_second"])
        results[layout] = {**ranked[(len(ranked) - 1) // 2],
                           "all_utterances_per_second": [r["utterances_per_second"] for r in runs[layout]]}
    base = results["per_utterance"]["utterances_per_second"] if "per_utterance" in results else None
    for layout in args.arms:  # past the first step's warm-up: the rate of a run of hundreds of steps
        rates = sorted(r["utterances_per_second_after_first_step"] for r in runs[layout]
                       if r["utterances_per_second_after_first_step"] is not None)
        results[layout]["median_utterances_per_second_after_first_step"] = rates[(len(rates) - 1) // 2] if rates \
            else None
        results[layout]["all_utterances_per_second_after_first_step"] = rates
    steady_base = results.get("per_utterance", {}).get("median_utterances_per_second_after_first_step")
    for layout in args.arms:
        if base and layout != "per_utterance":
            results[f"speedup_{layout}"] = round(results[layout]["utterances_per_second"] / base, 2)
            steady = results[layout]["median_utterances_per_second_after_first_step"]
            if steady and steady_base:
                results[f"speedup_after_first_step_{layout}"] = round(steady / steady_base, 2)
    if "packed" in results and base:
        results["speedup"] = results.pop("speedup_packed")
    if {"packed_accumulated", "packed_self_predictions"} <= set(results):
        results["self_predictions_cost"] = round(results["packed_accumulated"]["utterances_per_second"]
                                                 / results["packed_self_predictions"]["utterances_per_second"], 2)
    results["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": args.model,
        "threads": 1 if args.processes > 1 else args.threads, "processes": args.processes,
        "machine": machine(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "repeats": args.repeats,
        "ddp_find_unused_parameters": args.ddp_find_unused_parameters,
        "command": "python evaluation/bench_sft_packed.py " + shlex.join(sys.argv[1:]),
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    ratios = ", ".join(f"{k.removeprefix('speedup_')}: {v:.2f}x" for k, v in results.items() if k.startswith("speedup"))
    print(f"vs per utterance ({base} utt/s): {ratios}  -> {args.out}")
    print(f"rerun: {results['meta']['command']}")


if __name__ == "__main__":
    main()
