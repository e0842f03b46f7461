"""Supervised fine-tuning (LoRA/QLoRA) of an instruct LLM for emotion recognition in conversation.

    python recipes/sft.py --config recipes/smollm2-135m/sft/context.yaml
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 recipes/sft.py --config recipes/smollm2-135m/sft/smoke.yaml
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/sft.py \\
        --config recipes/qwen2.5-3b/sft/qlora.yaml

Any config key can be overridden on the command line (`--learning_rate 1e-3`). Writes to `output_dir`: the
adapter, erc_config.yaml, prompt_template.j2, metrics.json + predictions.jsonl (test split), dev/ (the selected
checkpoint's dev predictions), run_summary.json, and merged/ when `merge_adapter: true`.

Order: train (resuming from the last checkpoint-* in output_dir when there is one; `--resume_from_checkpoint
false` starts over) -> keep the best adapter -> label dev and test with the adapter on every process -> end the
process group -> rank 0 merges the saved adapter into a freshly loaded bf16 base on the CPU (`erc_llm.merge`,
the same as `erc-llm merge --adapter <output_dir>`), so test metrics come from the adapter vLLM serves with
LoRARequest and merged/ is never a 4-bit model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import set_seed

from erc_llm.data.cli import guarded_main
from erc_llm.offline_models import resolve_model
from erc_llm.provenance import run_provenance
from erc_llm.training.config import parse_sft_args
from erc_llm.training.steps import (
    StepClock,
    Stopwatch,
    add_train_timer,
    apply_cpu_precision,
    build_trainer,
    ddp_find_unused,
    evaluate_test,
    export_merged,
    load_corpus,
    load_model,
    load_tokenizer,
    main_process_rank,
    make_prompt_builder,
    resume_checkpoint,
    save_run_config,
    selected_dev_records,
    steady_rate,
    world_size,
    write_split_outputs,
    write_summary,
)

logger = logging.getLogger("erc_llm.sft")


def main() -> None:
    data_args, training_args, model_args = parse_sft_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    clock = Stopwatch()
    provenance = run_provenance(Path(__file__))  # checkout, commit, versions, machine, command
    if provenance["library_mismatch"]:
        logger.warning(provenance["library_mismatch"])

    # ---- seed ----------------------------------------------------------------------------------------
    set_seed(training_args.seed)

    # ---- data and prompts --------------------------------------------------------------------------
    splits = load_corpus(data_args)
    builder = make_prompt_builder(data_args, splits)
    labels = list(splits.label_set.labels)

    # ---- tokenizer and model -----------------------------------------------------------------------
    model_path = resolve_model(model_args.model_name_or_path)
    precision_fallback = apply_cpu_precision(model_args, training_args)  # bf16 -> float32 without native bf16
    tokenizer = load_tokenizer(model_path, model_args, training_args)
    model = load_model(model_path, model_args, training_args)

    # ---- trainer (label-only, class-weighted loss; dev W-F1 by label scoring) -----------------------
    trainer, data_info = build_trainer(model, tokenizer, model_args, training_args, builder, splits,
                                       data_args.train_subsample, data_args.train_subsample_strategy,
                                       data_args.subsample_seed)
    logger.info("world size %d; %s", world_size(), data_info)
    save_run_config(training_args.output_dir, data_args, training_args, model_args, as_asked=precision_fallback)

    # ---- train ---------------------------------------------------------------------------------------
    if training_args.eval_at_start:
        trainer.evaluate()
    started = clock.total()
    resume = resume_checkpoint(training_args)
    if resume:
        logger.info("resuming from %s", resume)
    train_timer = add_train_timer(trainer, resume)  # train_seconds.json in each checkpoint: whole time over resumes
    step_clock = StepClock()
    trainer.add_callback(step_clock)
    train_result = trainer.train(resume_from_checkpoint=resume)
    train_seconds = clock.total() - started

    # ---- save (best adapter by dev W-F1 when load_best_model_at_end) ------------------------------------
    trainer.save_model(training_args.output_dir)

    # ---- evaluate with the adapter: dev of the selected checkpoint, then the test split ------------------
    out = Path(training_args.output_dir)
    dev_records = selected_dev_records(trainer, splits.dev)
    summary = {
        "world_size": world_size(), "model": model_args.model_name_or_path, "corpus": data_args.corpus,
        **data_info, "train_seconds": round(train_seconds, 1),
        "train_seconds_all_parts": train_timer.all_parts(train_seconds), "train_steps": train_result.global_step,
        "train_loss": round(train_result.training_loss, 4), "train_tokens_per_process": trainer.train_tokens,
        "train_tokens_per_second": round(trainer.train_tokens * world_size() / max(train_seconds, 1e-6), 1),
        "best_checkpoint": trainer.state.best_model_checkpoint, "best_dev_metric": trainer.state.best_metric,
        "dev_eval_seconds": trainer.dev_seconds, "bf16": training_args.bf16,
        "dtype": str(model.dtype).removeprefix("torch."),
        "precision_fallback": precision_fallback, "torch_threads": torch.get_num_threads(),
        "resumed_from": resume, "ddp_find_unused_parameters": ddp_find_unused(trainer),
        "inline_self_predicted": trainer.inline_totals if training_args.packed_inline_self_predictions else None,
        "train_step_end_seconds": step_clock.step_ends, "train_step_lines": trainer.step_lines,
        "train_lines_per_second_after_first_step": steady_rate(step_clock.step_ends, trainer.step_lines),
        "provenance": provenance,
    }
    dev_metrics = write_split_outputs(out / "dev", data_args.eval_split, data_args.corpus, dev_records, labels, summary)
    summary["dev_weighted_f1"] = dev_metrics["weighted_f1"]
    summary["dev_macro_f1"] = dev_metrics["macro_f1"]
    if splits.test is not None:
        summary["total_seconds"] = clock.total()
        evaluate_test(trainer, splits, data_args, dev_records, out, summary)
    else:
        write_split_outputs(out, data_args.eval_split, data_args.corpus, dev_records, labels, summary)
    summary["total_seconds"] = clock.total()
    write_summary(training_args.output_dir, summary)
    is_main = main_process_rank()
    trainer.accelerator.wait_for_everyone()  # no process tears the group down while another is still in a collective
    trainer.end()  # trackers finished, process group destroyed: nothing below talks to the other processes

    # ---- merged/ for vLLM: the saved adapter into a fresh bf16 base, on the CPU, once ----------------------
    if training_args.merge_adapter and is_main:
        started = clock.total()
        merged_dir = export_merged(training_args.output_dir)
        summary.update(merged_dir=str(merged_dir), merge_seconds=round(clock.total() - started, 1),
                       total_seconds=clock.total())
        write_summary(training_args.output_dir, summary)


if __name__ == "__main__":
    guarded_main(main)  # wrong input: one `error:` line, exit 2
