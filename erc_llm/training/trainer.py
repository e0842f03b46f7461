"""`ERCSFTTrainer`: TRL's `SFTTrainer` with a class-weighted, label-only loss and dev evaluation by label scoring.

Loss. Only the answer tokens (the label word, optionally the end-of-turn token) are scored: the model is asked
for logits at those positions only (`logits_to_keep`), and

    loss = sum_t w_(y(t)) * CE_t / T

over the T answer tokens of the optimizer step (all its gradient-accumulation micro-batches on all data-parallel
processes; each process's loss is scaled by the process count, which DDP's gradient averaging undoes), where w is the
class weight of the token's example (mean 1 over the training examples, see
`erc_llm.training.data.class_weights`). Dividing by T rather than by sum(w) keeps the weights effective inside a
batch whose examples all share one class; dividing by the step's T (not the micro-batch's) makes batch 4 and
batch 1 x 4 accumulation steps the same objective. CE_t is over the whole vocabulary, or with
`label_loss: label_set` at an answer's first token over the labels' first tokens only (`label_first_ids`).

Inline labels from the model itself (`packed_inline_self_predictions = p`, packed layout). Each micro-batch first
goes through the model without gradients and with dropout off; the argmax over the labels' first tokens at every
answer is the label the model gives that line from the gold-inline context before it (teacher-forced, one pass).
Where it differs from gold, with probability p it replaces the inline label that later lines see
(`erc_llm.training.packed.show_inline_labels`) and only the gold first token is trained there; then the usual
loss. T above counts the step's answer tokens before replacement. The share of wrong predictions is logged as
`inline_self_wrong` (a teacher-forced training error rate); run_summary.json keeps the main process's counts
(`inline_self_predicted`: answers, wrong, shown).

Evaluation. `evaluate()` labels the dev dialogues with `erc_llm.labelling.loop.label_split` (the labelling
package's driver, either prompt layout; constrained label scoring, history from the model's own predictions) and
reports `eval_weighted_f1`, `eval_macro_f1`, `eval_accuracy`; `metric_for_best_model` and early stopping work on
these. Under data parallelism every process labels a share (chained history: a share of each round or wave,
exchanged after it) and all processes get every prediction.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from trl import SFTTrainer

from erc_llm.data.schema import Dialogue
from erc_llm.evaluation.metrics import compute_metrics
from erc_llm.evaluation.rundir import PredictionRecord
from erc_llm.labelling.bias import BiasedScorer
from erc_llm.labelling.loop import Labelled, label_split
from erc_llm.labelling.scorers import HFLabelScorer, HFPackedScorer
from erc_llm.prompting.answer import LabelTokens
from erc_llm.prompting.builder import PromptBuilder
from erc_llm.training.data import IGNORE_INDEX
from erc_llm.training.packed import answer_spans, show_inline_labels
from erc_llm.training.sampling import ProcessBalancedSampler

_TARGET_KEYS = ("target_rows", "target_cols", "target_ids", "target_weights", "target_first")


def to_records(labelled: Sequence[Labelled], dialogues: Sequence[Dialogue] = ()) -> list[PredictionRecord]:
    """Prediction records of labelled utterances (scores rounded for the run files), each with its input
    utterance's `meta` (extra columns/fields) when `dialogues` are given, as `erc-llm label` writes them."""
    metas = {u.key: u.meta for d in dialogues for u in d if u.meta}
    return [
        PredictionRecord(
            dialogue_id=item.example.dialogue_id, utterance_index=item.example.index, speaker=item.example.speaker,
            text=item.example.text, pred=item.pred, gold=item.example.label, utterance_id=item.example.utterance_id,
            scores={k: round(v, 6) for k, v in item.scores.items()}, meta=metas.get(item.example.key),
        )
        for item in labelled
    ]


def score_records(records: Sequence[PredictionRecord], labels: Sequence[str]) -> dict[str, Any]:
    """`compute_metrics` over records that have a gold label."""
    scored = [r for r in records if r.gold is not None]
    if not scored:
        raise ValueError("no gold labels to score")
    return compute_metrics([r.gold for r in scored], [r.pred for r in scored], labels)


def label_token_loss(logits: torch.Tensor, targets: torch.Tensor, first: torch.Tensor,
                     label_first_ids: torch.Tensor | None) -> torch.Tensor:
    """Per-token cross-entropy of the answer tokens: over the vocabulary, or (label_first_ids given) at first
    answer tokens over the labels' first tokens only, the distribution labelling scores."""
    if label_first_ids is None or not bool(first.any()):
        return F.cross_entropy(logits, targets, reduction="none")
    ids = label_first_ids.to(logits.device)
    hits = targets[first].unsqueeze(1) == ids.unsqueeze(0)  # (n_first, K): which label each first token starts
    if not bool(hits.any(dim=1).all()):
        raise ValueError("label_loss=label_set: an answer's first token is not one of the labels' first tokens")
    loss = logits.new_empty(targets.shape)
    loss[first] = F.cross_entropy(logits[first][:, ids], hits.float().argmax(dim=1), reduction="none")
    rest = ~first  # continuation and end-of-turn tokens: over the vocabulary (no vocabulary CE at first tokens)
    loss[rest] = F.cross_entropy(logits[rest], targets[rest], reduction="none")
    return loss


@torch.no_grad()
def predict_answers(model, inputs: dict[str, torch.Tensor], answer: LabelTokens) -> list[str]:
    """The label `model` gives each answer of a padding-free packed batch from the context before it: argmax over
    the labels' first tokens, dropout off (what packed labelling would answer given those inline labels)."""
    cols = inputs["target_cols"][inputs["target_first"]]
    keep, index = torch.unique(cols, return_inverse=True)
    was_training = model.training
    model.eval()
    try:
        logits = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], logits_to_keep=keep,
                       use_cache=False).logits[0, index]
    finally:
        model.train(was_training)
    first_ids = torch.tensor(answer.first_ids, device=logits.device)
    return [answer.labels[i] for i in logits[:, first_ids].argmax(-1).tolist()]


def mean_step_answer_tokens(dataset, args) -> float:
    """Answer tokens per full optimizer step on average over the training set (`loss_normalizer: mean_step_tokens`):
    mean answer tokens per example x examples per step (batch x accumulation x processes)."""
    answers = sum(sum(1 for t in labels if t != IGNORE_INDEX) for labels in dataset["labels"])
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    return max(1.0, answers / max(1, len(dataset)) * per_step)


class ERCSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss is class-weighted on label tokens and whose evaluation is dev label scoring."""

    def __init__(self, *args, builder: PromptBuilder, eval_dialogues: Sequence[Dialogue],
                 label_first_ids: Sequence[int] | None = None, answer: LabelTokens | None = None,
                 inline_self_predictions: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.answer = answer
        self.inline_self_predictions = inline_self_predictions
        self.inline_counts = {"answers": 0, "wrong": 0, "shown": 0}  # since the last log
        self.inline_totals = {"answers": 0, "wrong": 0, "shown": 0}
        self._inline_calls = (-1, 0)  # (global step, micro-batch index in it): seeds the replacement draws
        # label_loss == label_set: the labels' first token ids; the loss at first answer tokens is over these only
        self.label_first_ids = torch.tensor(list(label_first_ids), dtype=torch.long) if label_first_ids else None
        self.builder = builder
        self.eval_dialogues = list(eval_dialogues)
        self.labels = list(builder.label_set.labels)
        self.loss_is_scaled_for_ga = True  # compute_loss divides by the answer tokens of the whole accumulated step
        self.mean_step_answer_tokens = (mean_step_answer_tokens(self.train_dataset, self.args)
                                        if self.train_dataset is not None
                                        and self.args.step_loss_normalizer == "mean_step_tokens" else None)
        self.train_tokens = 0
        self.train_compute_seconds = 0.0
        self.step_lines: list[int] = []  # labelled lines per optimizer step of this run, over all processes
        self._step_lines = 0
        self.dev_records: dict[int, list[PredictionRecord]] = {}
        self.dev_seconds: list[float] = []

    # ---- data -------------------------------------------------------------------------------------------
    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["input_ids", "labels", "label_weights", "weight", "length"]

    def _get_train_sampler(self, train_dataset=None):
        """A random order split evenly over the processes in every step (`balance_processes`), its steps optionally
        grouped by dialogue length (`group_steps_by_length`), else TRL's."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        wanted = self.args.balance_processes or self.args.group_steps_by_length > 0
        if not (wanted and self.args.train_sampling_strategy == "random"):
            return super()._get_train_sampler(train_dataset)
        return ProcessBalancedSampler(list(dataset["length"]), self.args.world_size,
                                      self.args.per_device_train_batch_size, self.args.gradient_accumulation_steps,
                                      self.args.data_seed if self.args.data_seed is not None else self.args.seed,
                                      group_steps=self.args.group_steps_by_length)

    def get_batch_samples(self, epoch_iterator, num_batches: int, device) -> tuple[list, Any]:
        """The training loop's next optimizer step of micro-batches; records its labelled lines over all processes
        (`step_lines`, counted in `_get_num_items_in_batch`)."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batch_samples:
            self.step_lines.append(self._step_lines)
        return batch_samples, num_items_in_batch

    # ---- loss -------------------------------------------------------------------------------------------
    def _get_num_items_in_batch(self, batch_samples: list, device) -> float:
        """Answer tokens in one optimizer step, over its micro-batches and (summed) over the data-parallel processes:
        the loss is their (weighted) mean however the step is split, so batch 4, batch 1 x 4 accumulation steps and
        2 processes x batch 1 x 2 accumulation steps train the same objective. With `loss_normalizer:
        mean_step_tokens`, the training set's mean per step instead (a constant: every answer token weighs the same)."""
        count = sum(int(batch["target_ids"].numel()) for batch in batch_samples)
        lines = sum(int(batch["target_first"].sum()) for batch in batch_samples)  # one first answer token per line
        if self.args.world_size > 1:
            count, lines = (int(x) for x in self.accelerator.gather(torch.tensor([[count, lines]], device=device)).sum(0))
        self._step_lines = lines
        if self.args.step_loss_normalizer == "mean_step_tokens":
            return self.mean_step_answer_tokens
        return count

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        started = time.perf_counter()
        if self.inline_self_predictions and model.training:
            inputs = self.self_predicted_inline(model, inputs)
        rows, cols, target_ids, weights, first = (inputs.pop(k) for k in _TARGET_KEYS)
        keep, col_index = torch.unique(cols, return_inverse=True)
        outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
        logits = outputs.logits[rows, col_index].float()
        token_loss = label_token_loss(logits, target_ids, first, self.label_first_ids)
        # T = the step's answer tokens over all accumulated micro-batches (Trainer passes num_items_in_batch)
        loss = (token_loss * weights).sum() / max(1.0, float(num_items_in_batch or target_ids.numel()))
        if num_items_in_batch is not None and self.args.world_size > 1:
            loss = loss * self.args.world_size  # DDP averages the processes' gradients; T above is their sum
        if model.training:
            mask = inputs.get("attention_mask")
            self.train_tokens += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            self.train_compute_seconds += time.perf_counter() - started
        return (loss, outputs) if return_outputs else loss

    def self_predicted_inline(self, model, inputs):
        """The batch with the model's own wrong predictions shown inline at a share p of the answers."""
        predicted = predict_answers(self.accelerator.unwrap_model(model), inputs, self.answer)
        spans = answer_spans(inputs, self.answer)
        gold = [label for _, _, label in spans]
        step, call = self._inline_calls
        self._inline_calls = (self.state.global_step, call + 1 if step == self.state.global_step else 0)
        rng = random.Random(f"{self.args.seed}:{self._inline_calls}")
        shown = [p if p != g and rng.random() < self.inline_self_predictions else None
                 for p, g in zip(predicted, gold)]
        for counts in (self.inline_counts, self.inline_totals):
            counts["answers"] += len(gold)
            counts["wrong"] += sum(p != g for p, g in zip(predicted, gold))
            counts["shown"] += sum(s is not None for s in shown)
        return show_inline_labels(inputs, shown, self.answer, spans) if any(shown) else inputs

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.inline_counts["answers"] and "loss" in logs:
            logs["inline_self_wrong"] = round(self.inline_counts["wrong"] / self.inline_counts["answers"], 4)
            self.inline_counts = dict.fromkeys(self.inline_counts, 0)
        super().log(logs, *args, **kwargs)

    # ---- evaluation -------------------------------------------------------------------------------------
    def label_scorer(self, label_bias: dict[str, float] | None = None):
        """A scorer over the (unwrapped) model being trained, for the run's prompt layout (a kept KV cache per
        dialogue for packed chats), with the run's precision and length limit, and the label bias if given."""
        autocast = torch.bfloat16 if self.args.bf16 else (torch.float16 if self.args.fp16 else None)
        model = self.accelerator.unwrap_model(self.model)
        if self.builder.config.layout == "packed":
            scorer = HFPackedScorer(model, self.processing_class, self.labels, autocast_dtype=autocast)
        else:
            scorer = HFLabelScorer(model, self.processing_class, self.labels,
                                   batch_size=self.args.label_score_batch_size, max_length=self.args.max_length,
                                   autocast_dtype=autocast)
        return BiasedScorer(scorer, label_bias) if label_bias else scorer

    def label_and_score(self, dialogues: Sequence[Dialogue], label_bias: dict[str, float] | None = None,
                        ) -> tuple[dict[str, Any], list[PredictionRecord]]:
        """Label dialogues with the current model (`erc_llm.labelling.loop.label_split`); (metrics, records)."""
        labelled = label_split(dialogues, self.builder, self.label_scorer(label_bias), batch_size=64,
                               progress=not self.args.disable_tqdm)
        records = to_records(labelled, dialogues)
        return score_records(records, self.labels), records

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        started = time.perf_counter()
        scores, records = self.label_and_score(self.eval_dialogues)
        seconds = time.perf_counter() - started
        self.dev_seconds.append(seconds)
        self.dev_records[self.state.global_step] = records
        metrics = {
            f"{metric_key_prefix}_weighted_f1": scores["weighted_f1"],
            f"{metric_key_prefix}_macro_f1": scores["macro_f1"],
            f"{metric_key_prefix}_accuracy": scores["accuracy"],
            f"{metric_key_prefix}_n": scores["n"],
            f"{metric_key_prefix}_runtime": round(seconds, 2),
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def best_dev_records(self) -> list[PredictionRecord] | None:
        """Dev predictions of the selected checkpoint (the last evaluation when nothing was selected)."""
        if not self.dev_records:
            return None
        step = self.state.best_global_step
        return self.dev_records.get(step) if step in self.dev_records else self.dev_records[max(self.dev_records)]

    def throughput(self) -> dict[str, float]:
        """Training tokens and tokens/s of forward+loss time (this process)."""
        return {"train_tokens": self.train_tokens, "train_forward_seconds": round(self.train_compute_seconds, 1)}
