"""The steps of `recipes/sft.py`, one function each: data, prompts, tokenizer, model, trainer, outputs (the script is
the table of contents; `erc_llm.labelling.run` is the separate `erc-llm label` job)."""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    EarlyStoppingCallback,
    PreTrainedTokenizerBase,
    TrainerCallback,
)
from trl import get_peft_config, get_quantization_config

from erc_llm.data.labels import LabelSet
from erc_llm.data.schema import Dialogue
from erc_llm.data.sources import resolve_source, run_corpus_name
from erc_llm.data.speakers import SpeakerRegistry
from erc_llm.evaluation.rundir import PredictionRecord, write_metrics, write_predictions
from erc_llm.io import atomic_write_json, atomic_write_text
from erc_llm.labelling.bias import choose_label_bias
from erc_llm.precision import cpu_dtype
from erc_llm.prompting.builder import PromptBuilder
from erc_llm.prompting.dataset import build_prompt_builder
from erc_llm.prompting.templates import template_text
from erc_llm.training.collator import LabelOnlyCollator
from erc_llm.training.config import (
    ERCDataArguments,
    ERCModelConfig,
    ERCSFTConfig,
    SFTConfigError,
    dump_yaml,
    resolved_config,
)
from erc_llm.training.curves import TrainingCurvesCallback
from erc_llm.training.data import (
    build_train_dataset,
    class_weights,
    dialogue_index_dataset,
    subsample_dialogues,
    subsample_examples,
)
from erc_llm.training.trainer import ERCSFTTrainer, score_records

SYSTEM_NAME = "sft"


@dataclass
class CorpusSplits:
    """The dialogues a run uses."""

    label_set: LabelSet
    train: list[Dialogue]
    dev: list[Dialogue]
    test: list[Dialogue] | None


def load_corpus(args: ERCDataArguments) -> CorpusSplits:
    """Train, dev (subsampled by whole dialogues if asked) and test dialogues plus the label set (`labels`, else
    the one the data declares, else fitted to train: `erc_llm.data.sources`)."""
    source = resolve_source(args.corpus, labels=args.labels, data_dir=args.data_dir)
    source.require_distinct([args.train_split, args.eval_split, args.test_split])
    train = source.load(args.train_split)
    label_set = source.label_set_for(train)
    dev = source.load(args.eval_split, label_set=label_set).dialogues
    test = source.load(args.test_split, label_set=label_set).dialogues if args.test_split else None
    dev = subsample_dialogues(dev, args.eval_subsample, args.subsample_seed)
    if test is not None:
        test = subsample_dialogues(test, args.test_subsample, args.subsample_seed)
    return CorpusSplits(label_set, train.dialogues, dev, test)


def make_prompt_builder(args: ERCDataArguments, splits: CorpusSplits) -> PromptBuilder:
    """The prompt builder of `erc_llm.prompting.dataset` (speaker registry from train; biographies and FAISS
    demonstrations built from train and cached under `index_dir` when the prompt uses them)."""
    registry = SpeakerRegistry.build([splits.train])
    return build_prompt_builder(args.prompt_config(), args.corpus, args.data_dir, index_dir=args.index_dir,
                                registry=registry, label_set=splits.label_set)


def load_tokenizer(model_path: str, model_args: ERCModelConfig, training_args: ERCSFTConfig) -> PreTrainedTokenizerBase:
    """Tokenizer with a pad token (the EOS token when the model has none)."""
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=model_args.model_revision,
                                              trust_remote_code=training_args.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def on_cpu(training_args: ERCSFTConfig) -> bool:
    """Whether this run trains on the CPU (use_cpu, or no CUDA device)."""
    return bool(training_args.use_cpu or not torch.cuda.is_available())


def apply_cpu_precision(model_args: ERCModelConfig, training_args: ERCSFTConfig) -> dict[str, Any]:
    """On a CPU without native bf16, bf16 weights and bf16 autocast run in float32 (`erc_llm.precision`). Returns
    the settings it replaced with the values the recipe asked for: erc_config.yaml keeps those (the experiment, so
    saved settings still match their recipe), run_summary.json records what ran. 4-bit QLoRA keeps its settings."""
    asked: dict[str, Any] = {}
    if not on_cpu(training_args) or model_args.load_in_4bit:
        return asked
    dtype = cpu_dtype(model_args.dtype, "model weights (dtype: bfloat16)")
    if dtype != model_args.dtype:
        asked["dtype"], model_args.dtype = model_args.dtype, dtype
    if training_args.bf16 and cpu_dtype("bfloat16", "autocast (bf16: true)") == "float32":
        asked["bf16"], training_args.bf16 = True, False
    return asked


def load_model(model_path: str, model_args: ERCModelConfig, training_args: ERCSFTConfig):
    """The base causal LM (4-bit NF4 for QLoRA, on this process's GPU); PEFT wraps it inside the trainer."""
    quantization = get_quantization_config(model_args)
    dtype = model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch, model_args.dtype)
    kwargs: dict[str, Any] = {"revision": model_args.model_revision, "dtype": dtype,
                              "trust_remote_code": training_args.trust_remote_code}
    attn = model_args.attn_implementation or ("sdpa" if on_cpu(training_args) else None)
    if attn:
        kwargs["attn_implementation"] = attn
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        if on_cpu(training_args):
            kwargs["device_map"] = {"": "cpu"}  # bitsandbytes' CPU backend (tests; far too slow for real runs)
        else:
            from accelerate import PartialState

            kwargs["device_map"] = {"": PartialState().local_process_index}
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    model.config.use_cache = False
    return model


def lora_config(model_args: ERCModelConfig, model):
    """TRL's LoRA config from the model args, restricted to the top `lora_top_layers` layers when set."""
    config = get_peft_config(model_args)
    if config is not None and model_args.lora_top_layers:
        n = model.config.get_text_config().num_hidden_layers
        config.layers_to_transform = list(range(max(0, n - model_args.lora_top_layers), n))
    return config


def build_trainer(
    model, tokenizer, model_args: ERCModelConfig, training_args: ERCSFTConfig, builder: PromptBuilder,
    splits: CorpusSplits, train_size: int | None, strategy: str, seed: int,
) -> tuple[ERCSFTTrainer, dict[str, Any]]:
    """Render + tokenise training prompts, weight classes, wire collator, callbacks and PEFT into the trainer."""
    from erc_llm.prompting.answer import label_tokens

    answer = label_tokens(tokenizer, builder.label_set.labels)
    if training_args.label_loss == "label_set" and not answer.first_token_unique:
        raise SFTConfigError("label_loss: label_set needs labels whose first tokens differ for this tokenizer "
                             f"({builder.label_set.labels}); use label_loss: vocabulary")
    if training_args.packed_inline_self_predictions and not answer.first_token_unique:
        raise SFTConfigError("packed_inline_self_predictions needs labels whose first tokens differ for this "
                             f"tokenizer ({builder.label_set.labels}): one pass reads each line's label from them")
    if builder.config.layout == "packed":
        dataset, weights, info = packed_train_data(builder, splits, tokenizer, answer, training_args, train_size, seed)
    else:
        examples = subsample_examples(builder.training_examples(splits.train), train_size, strategy, seed)
        weights = class_weights([e.label for e in examples], training_args.class_weighting,
                                training_args.max_class_weight)
        dataset, stats = build_train_dataset(examples, tokenizer, answer, weights, training_args.max_length,
                                             with_end=training_args.train_on_end_token)
        info = {"train_examples": len(examples), "train_label_counts": label_counts(e.label for e in examples),
                "truncated_prompts": stats.truncated, "mean_tokens_per_example": round(stats.mean_length, 1),
                "max_tokens_per_example": stats.max_length}
    collator = LabelOnlyCollator(pad_token_id=tokenizer.pad_token_id,
                                 padding_free=training_args.batching == "padding_free",
                                 pad_to_multiple_of=training_args.pad_to_multiple_of)
    callbacks = [TrainingCurvesCallback()]  # training_curves.png in the run folder
    if training_args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(training_args.early_stopping_patience,
                                               training_args.early_stopping_threshold))
    trainer = ERCSFTTrainer(
        model=model, args=training_args, train_dataset=dataset, eval_dataset=dialogue_index_dataset(splits.dev),
        processing_class=tokenizer, data_collator=collator, peft_config=lora_config(model_args, model),
        callbacks=callbacks, builder=builder, eval_dialogues=splits.dev,
        label_first_ids=answer.first_ids if training_args.label_loss == "label_set" else None,
        answer=answer, inline_self_predictions=training_args.packed_inline_self_predictions,
    )
    info.update(layout=builder.config.layout, label_loss=training_args.label_loss,
                class_weights={k: round(v, 4) for k, v in weights.items()},
                answer_first_token_unique=answer.first_token_unique)
    return trainer, info


def label_counts(labels) -> dict[str, int]:
    """Sorted label -> count."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


def packed_train_data(builder: PromptBuilder, splits: CorpusSplits, tokenizer, answer, training_args: ERCSFTConfig,
                      train_size: int | None, seed: int):
    """(dataset, class weights, info) of the packed layout: whole training dialogues (about `train_size` lines)."""
    from erc_llm.prompting.dataset import warm_sources
    from erc_llm.training.packed import build_packed_train_dataset, load_inline_predictions

    dialogues = subsample_dialogues(splits.train, train_size, seed)
    labels = [u.label for d in dialogues for u in d if u.label is not None]
    weights = class_weights(labels, training_args.class_weighting, training_args.max_class_weight)
    warm_sources(builder, dialogues)
    history = builder.gold_history(splits.train) if builder.config.use_history else None  # whole training split
    inline = training_args.packed_inline_predictions
    if inline and not Path(inline).exists():
        recipe = training_args.packed_inline_predictions_recipe
        how = (f"`erc-llm staged --config <this recipe>` trains {recipe}, labels the training split with it, then "
               "trains this recipe" if recipe else "label the training split first (erc-llm label --adapter <run> "
               "--split train --output_dir <its folder>)")
        raise SFTConfigError(f"packed_inline_predictions {inline} does not exist: {how}")
    inline_labels = load_inline_predictions(inline, dialogues, builder.label_set.labels) if inline else None
    dataset, stats = build_packed_train_dataset(
        dialogues, builder, tokenizer, answer, weights, training_args.max_length,
        with_end=training_args.train_on_end_token, label_noise=training_args.packed_label_noise, seed=seed,
        history=history, inline_labels=inline_labels)
    info = {"train_examples": stats.targets, "train_dialogues": stats.dialogues, "train_sequences": stats.sequences,
            "train_label_counts": label_counts(labels), "chunked_dialogues": stats.chunked_dialogues,
            "mean_tokens_per_sequence": round(stats.mean_length, 1), "max_tokens_per_sequence": stats.max_length,
            "mean_tokens_per_example": round(stats.tokens_per_target, 1), "noised_inline_labels": stats.noised_labels,
            "predicted_inline_labels_not_gold": stats.predicted_inline_labels}
    return dataset, weights, info


def is_main_process() -> bool:
    """Rank 0 (or no process group)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def world_size() -> int:
    """Number of training processes."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def command_line() -> str:
    """How this process was started (recorded in metrics.json)."""
    launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in os.environ else ("accelerate" if "ACCELERATE_PROCESS_ID" in os.environ else "python")
    return f"{launcher} {shlex.join(sys.argv)}"


def save_run_config(output_dir: str, data_args: ERCDataArguments, training_args: ERCSFTConfig,
                    model_args: ERCModelConfig, as_asked: dict[str, Any] | None = None) -> None:
    """Resolved config (YAML) and the prompt template text beside the adapter; `as_asked` (from
    `apply_cpu_precision`) puts back the values the recipe asked for where this machine ran others."""
    if not is_main_process():
        return
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {**resolved_config(data_args, model_args, training_args), **(as_asked or {})}
    atomic_write_text(out / "erc_config.yaml", dump_yaml(config))
    atomic_write_text(out / "prompt_template.j2", template_text(data_args.template))


def write_split_outputs(run_dir: Path, split: str, corpus: str, records: Sequence[PredictionRecord],
                        labels: Sequence[str], extra: dict[str, Any]) -> dict[str, Any]:
    """predictions.jsonl + metrics.json of one labelled split (main process writes)."""
    metrics = score_records(records, labels)
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_predictions(run_dir, records)
        write_metrics(run_dir, metrics, system=SYSTEM_NAME, corpus=run_corpus_name(corpus), split=split, command=command_line(),
                      extra=extra)
    return metrics


def evaluate_test(trainer: ERCSFTTrainer, splits: CorpusSplits, data_args: ERCDataArguments,
                  dev_records: Sequence[PredictionRecord], out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Label the test split and write its run files. With `calibrate_label_bias` the dev-fitted label bias is
    applied only when its held-out gain (cross-fit on dev by dialogue halves) is positive; the check and the
    decision go into the run summary (`label_bias` only when applied) and the log."""
    labels = list(splits.label_set.labels)
    bias = None
    if trainer.args.calibrate_label_bias:
        bias, entries = choose_label_bias(dev_records, labels, trainer.args.metric_for_best_model.removeprefix("eval_"))
        summary.update(entries)
    started = time.perf_counter()
    _, records = trainer.label_and_score(splits.test, label_bias=bias)
    summary["test_eval_seconds"] = round(time.perf_counter() - started, 1)
    summary["test_utterances"] = len(records)
    if bias and not builder_uses_predictions(trainer):
        # Without predicted history the bias changes no prompt: the raw argmax is recovered exactly from the scores.
        raw = [_unbiased(r, bias, labels) for r in records]
        raw_metrics = score_records(raw, labels)
        summary.update(test_weighted_f1_without_bias=raw_metrics["weighted_f1"],
                       test_macro_f1_without_bias=raw_metrics["macro_f1"])
    return write_split_outputs(out, data_args.test_split, data_args.corpus, records, labels, summary)


def builder_uses_predictions(trainer: ERCSFTTrainer) -> bool:
    """Whether prompts depend on earlier predictions (predicted emotion history)."""
    return trainer.builder.config.needs_rounds


def _unbiased(record: PredictionRecord, bias: dict[str, float], labels: Sequence[str]) -> PredictionRecord:
    """The record's prediction without the label bias (argmax of log q - b)."""
    best = max(labels, key=lambda label: math.log(max(record.scores[label], 1e-12)) - bias[label])
    return PredictionRecord(record.dialogue_id, record.utterance_index, record.speaker, record.text, best,
                            record.gold, record.utterance_id, record.scores)


def export_merged(output_dir: str, base: str | None = None) -> Path:
    """<output_dir>/merged: the saved adapter merged into a freshly loaded bf16 copy of its base on the CPU
    (never the 4-bit training model), servable by vLLM without PEFT. Call on one process, after evaluation."""
    from erc_llm.merge import merge_adapter

    return merge_adapter(output_dir, Path(output_dir) / "merged", base=base, dtype="bfloat16")


def write_summary(output_dir: str, summary: dict[str, Any]) -> None:
    """run_summary.json: sizes, timings, selection, throughput (main process)."""
    if is_main_process():
        atomic_write_json(Path(output_dir) / "run_summary.json", json.loads(json.dumps(summary, default=str)))


class Stopwatch:
    """Named wall-clock sections."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.sections: dict[str, float] = {}

    def mark(self, name: str, since: float) -> None:
        self.sections[name] = round(time.perf_counter() - since, 1)

    def total(self) -> float:
        return round(time.perf_counter() - self.started, 1)


# ---- GPU recipes: resume, dev records after a resume, merged export (issue 13) ----------------------------
def resume_checkpoint(training_args: ERCSFTConfig) -> str | None:
    """The checkpoint to resume from: `resume_from_checkpoint` when it names one, else the last `checkpoint-*`
    in output_dir (an interrupted run restarts where it stopped, as alignment-handbook recipes do); `false`,
    `no` or `none` starts over even when checkpoints exist."""
    from transformers.trainer_utils import get_last_checkpoint

    asked = training_args.resume_from_checkpoint
    if isinstance(asked, str) and asked.strip().lower() in ("false", "no", "none", "never"):
        return None
    if asked and str(asked).strip().lower() not in ("true", "yes", "auto", "last"):
        if not Path(asked).is_dir():
            raise FileNotFoundError(f"resume_from_checkpoint: {asked} is not a checkpoint folder")
        return str(asked)
    out = Path(training_args.output_dir)
    return get_last_checkpoint(str(out)) if out.is_dir() else None


TRAIN_SECONDS_FILE = "train_seconds.json"  # in every checkpoint: training seconds of all runs that led to it


class TrainSecondsCallback(TrainerCallback):
    """Writes into each checkpoint the training wall seconds spent up to it, over the interrupted runs it resumed
    from too, so a resumed run reports its whole training time (None once a part was not timed)."""

    def __init__(self, before: float | None) -> None:
        self.before = before
        self.started = time.perf_counter()

    def all_parts(self, this_run: float) -> float | None:
        """Training seconds over every part: the earlier parts' plus `this_run` (None when an earlier part was
        not timed)."""
        return None if self.before is None else round(self.before + this_run, 1)

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            atomic_write_json(checkpoint / TRAIN_SECONDS_FILE,
                              {"train_seconds": self.all_parts(time.perf_counter() - self.started)})


class StepClock(TrainerCallback):
    """Wall seconds from the start of this run's training to the end of each optimizer step (evaluations and saves
    between steps included): with `ERCSFTTrainer.step_lines`, a rate past the first step's warm-up."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.step_ends: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(round(time.perf_counter() - self.started, 2))


def steady_rate(step_ends: Sequence[float], step_lines: Sequence[int]) -> float | None:
    """Lines per second after the first optimizer step (which also pays for warm-up: allocations, first kernels);
    None with fewer than two steps."""
    if len(step_ends) < 2 or len(step_lines) < len(step_ends):
        return None
    return round(sum(step_lines[1:len(step_ends)]) / max(step_ends[-1] - step_ends[0], 1e-6), 3)


def add_train_timer(trainer: ERCSFTTrainer, resume: str | None) -> TrainSecondsCallback:
    """Time training across resumes: the seconds before `resume` come from its train_seconds.json (None when the
    checkpoint has none, e.g. written before this existed)."""
    before: float | None = 0.0
    if resume:
        path = Path(resume) / TRAIN_SECONDS_FILE
        before = json.loads(path.read_text()).get("train_seconds") if path.is_file() else None
    timer = TrainSecondsCallback(before)
    trainer.add_callback(timer)
    return timer


def selected_dev_records(trainer: ERCSFTTrainer, dev: Sequence[Dialogue]) -> list[PredictionRecord]:
    """Dev predictions of the selected checkpoint. After a resume the selected checkpoint may have been scored
    by the interrupted process: the (reloaded best) model labels dev again rather than reporting another step."""
    step = trainer.state.best_global_step
    if trainer.dev_records and (step in trainer.dev_records or (not step and trainer.state.best_metric is None)):
        return trainer.best_dev_records()
    return trainer.label_and_score(dev)[1]


def main_process_rank() -> bool:
    """Rank 0 by the launcher's environment (valid after the process group is gone)."""
    return int(os.environ.get("RANK", "0")) == 0


def ddp_find_unused(trainer: ERCSFTTrainer) -> bool | None:
    """`find_unused_parameters` of the DDP wrapper this run trained with (None without DDP)."""
    wrapped = getattr(trainer, "model_wrapped", None)
    return getattr(wrapped, "find_unused_parameters", None) if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) else None
