"""Model assembly, HF Trainer set-up and run-directory outputs of the encoder-fusion baseline.

The recipe `recipes/baseline.py` calls these in order: `prepare_data` -> `build_model` -> `build_trainer` ->
`trainer.train()` -> `save_run` -> `evaluate_splits`. A run directory ends up with::

    config.yaml             every resolved setting (accepted back by --config)
    model.safetensors       the best checkpoint's weights (by dev weighted-F1)
    baseline_meta.json      labels, input sizes, speaker vocabulary, train history
    dev/  metrics.json predictions.jsonl
    test/ metrics.json predictions.jsonl
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import EarlyStoppingCallback, EvalPrediction, Trainer

from erc_llm.baseline.config import (
    BaselineDataConfig,
    BaselineModelConfig,
    BaselineTrainingArguments,
    resolved_config,
    write_resolved_config,
)
from erc_llm.baseline.data import BaselineData, FusionCollator, FusionDataset, SplitInputs, prepare_data
from erc_llm.baseline.losses import IGNORE_INDEX, build_loss
from erc_llm.baseline.model import FusionClassifier
from erc_llm.evaluation import (
    PREDICTIONS_FILENAME,
    PredictionRecord,
    compute_metrics,
    write_metrics,
    write_predictions,
)
from erc_llm.io import atomic_write_json

logger = logging.getLogger(__name__)

META_FILENAME = "baseline_meta.json"
CONFIG_FILENAME = "config.yaml"


def build_model(data: BaselineData, model_config: BaselineModelConfig) -> FusionClassifier:
    """The fusion classifier for the prepared data (loss weights from the training labels)."""
    loss = build_loss(
        model_config.loss, len(data.label_set), train_label_ids=data.train_label_ids.tolist(),
        focal_gamma=model_config.focal_gamma, dice_smooth=model_config.dice_smooth,
        label_smoothing=model_config.label_smoothing,
    )
    return FusionClassifier(
        model_config, num_labels=len(data.label_set), input_dims=data.input_dims, loss=loss,
        num_speakers=len(data.speaker_vocab), text_encoder=data.text_encoder,
    )


def _optimizer(model: FusionClassifier, model_config: BaselineModelConfig,
               training_args: BaselineTrainingArguments) -> torch.optim.Optimizer:
    """AdamW with its own learning rate for a fine-tuned text encoder."""
    encoder_params = [p for p in model.text_encoder.parameters() if p.requires_grad] if model.text_encoder else []
    encoder_ids = {id(p) for p in encoder_params}
    head_params = [p for p in model.parameters() if p.requires_grad and id(p) not in encoder_ids]
    groups = [{"params": head_params, "lr": training_args.learning_rate}]
    if encoder_params:
        groups.append({"params": encoder_params,
                       "lr": model_config.text_encoder_learning_rate or training_args.learning_rate})
    return torch.optim.AdamW(groups, lr=training_args.learning_rate, weight_decay=training_args.weight_decay)


def trainer_metrics(label_names: list[str]):
    """Trainer `compute_metrics`: weighted-F1, macro-F1 and accuracy on the labelled rows."""

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        labels = np.asarray(prediction.label_ids)
        keep = labels != IGNORE_INDEX
        predicted = np.asarray(logits).argmax(axis=-1)
        scores = compute_metrics([label_names[i] for i in labels[keep]], [label_names[i] for i in predicted[keep]],
                                 label_names)
        return {name: scores[name] for name in ("weighted_f1", "macro_f1", "accuracy")}

    return compute


def build_trainer(
    model: FusionClassifier,
    data: BaselineData,
    model_config: BaselineModelConfig,
    training_args: BaselineTrainingArguments,
) -> Trainer:
    """An HF Trainer with dev-set model selection on weighted-F1 and early stopping."""
    callbacks = []
    if training_args.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=training_args.early_stopping_patience))
    pad_id = data.tokenizer.pad_token_id if data.tokenizer.pad_token_id is not None else 0
    return Trainer(
        model=model,
        args=training_args,
        train_dataset=FusionDataset(data.splits["train"]),
        eval_dataset=FusionDataset(data.splits["eval"]),
        data_collator=FusionCollator(pad_id),
        compute_metrics=trainer_metrics(list(data.label_set.labels)),
        callbacks=callbacks,
        optimizers=(_optimizer(model, model_config, training_args), None),
    )


def predict_split(trainer: Trainer, inputs: SplitInputs, label_names: list[str]) -> list[PredictionRecord]:
    """Prediction records (with class probabilities) for every utterance of a split."""
    output = trainer.predict(FusionDataset(inputs), metric_key_prefix=inputs.role)
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    probabilities = torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)), dim=-1).numpy()
    records = []
    for utterance, row in zip(inputs.utterances, probabilities):
        records.append(PredictionRecord(
            dialogue_id=utterance.dialogue_id, utterance_index=utterance.index, speaker=utterance.speaker,
            text=utterance.text, pred=label_names[int(row.argmax())], gold=utterance.label,
            utterance_id=utterance.utterance_id,
            scores={label: round(float(p), 6) for label, p in zip(label_names, row)}, meta=utterance.meta or None,
        ))
    return records


def command_line() -> str:
    """The command that started this process, shell-quoted."""
    return " ".join(shlex.quote(part) for part in sys.argv)


def evaluate_splits(
    trainer: Trainer,
    data: BaselineData,
    output_dir: str | Path,
    system: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Write predictions.jsonl and metrics.json for the eval and test splits under `output_dir/<split>/`."""
    label_names = list(data.label_set.labels)
    results: dict[str, dict[str, Any]] = {}
    for role in ("eval", "test"):
        inputs = data.splits.get(role)
        if inputs is None:
            continue
        run_dir = Path(output_dir) / inputs.split
        records = predict_split(trainer, inputs, label_names)
        write_predictions(run_dir / PREDICTIONS_FILENAME, records)
        scored = [r for r in records if r.gold is not None]
        if not scored:
            logger.warning("%s split has no gold labels: predictions written, no metrics", inputs.split)
            continue
        metrics = compute_metrics([r.gold for r in scored], [r.pred for r in scored], label_names)
        write_metrics(run_dir, metrics, system=system, corpus=data.corpus, split=inputs.split,
                      command=command_line(), extra={**(extra or {}), "n_predictions": len(records)})
        results[inputs.split] = metrics
        logger.info("%s: weighted-F1 %.4f, macro-F1 %.4f, accuracy %.4f (n=%d)", inputs.split,
                    metrics["weighted_f1"], metrics["macro_f1"], metrics["accuracy"], metrics["n"])
    return results


def save_run(
    trainer: Trainer,
    data: BaselineData,
    data_config: BaselineDataConfig,
    model_config: BaselineModelConfig,
    training_args: BaselineTrainingArguments,
    train_seconds: float,
) -> Path:
    """Save the (best) model, the resolved config and run metadata into the output directory."""
    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir))
    write_resolved_config(output_dir / CONFIG_FILENAME, resolved_config(data_config, model_config, training_args))
    state = trainer.state
    atomic_write_json(output_dir / META_FILENAME, {
        "labels": list(data.label_set.labels),
        "input_dims": data.input_dims,
        "speaker_vocab": data.speaker_vocab,
        "text_encoder_dir": data.text_encoder_dir,
        "train_utterances": len(data.splits["train"]),
        "best_metric": state.best_metric,
        "best_checkpoint": state.best_model_checkpoint,
        "epochs_run": state.epoch,
        "global_step": state.global_step,
        "train_seconds": round(train_seconds, 1),
        "log_history": state.log_history,
        "coverage": {role: inputs.coverage() for role, inputs in data.splits.items()},
    })
    return output_dir


def run_extra(data: BaselineData, trainer: Trainer, train_seconds: float, seed: int) -> dict[str, Any]:
    """Provenance stored under `extra` in metrics.json."""
    return {
        "best_dev_weighted_f1": trainer.state.best_metric,
        "epochs_run": trainer.state.epoch,
        "train_seconds": round(train_seconds, 1),
        "seed": seed,
        "train_utterances": len(data.splits["train"]),
        "modalities": sorted(data.input_dims),
    }


class Stopwatch:
    """Wall-clock seconds since creation."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def train_and_evaluate(
    data_config: BaselineDataConfig, model_config: BaselineModelConfig, training_args: BaselineTrainingArguments
) -> dict[str, dict[str, Any]]:
    """The whole recipe in one call (what `erc-llm baseline train` runs): seed, data, model, train, save, eval."""
    from transformers import set_seed

    set_seed(training_args.seed)
    data = prepare_data(data_config, model_config)
    model = build_model(data, model_config)
    trainer = build_trainer(model, data, model_config, training_args)
    clock = Stopwatch()
    trainer.train()
    train_seconds = clock.seconds
    output_dir = save_run(trainer, data, data_config, model_config, training_args, train_seconds)
    extra = run_extra(data, trainer, train_seconds, training_args.seed)
    return evaluate_splits(trainer, data, output_dir, training_args.system_name, extra=extra)
