"""A labelling run: input dialogues -> prompts -> engine -> resumable predictions -> metrics."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path

from erc_llm.data.corpora import CORPORA, load_split
from erc_llm.data.labels import get_label_set
from erc_llm.evaluation.metrics import compute_metrics
from erc_llm.evaluation.rundir import PredictionRecord, write_metrics, write_predictions
from erc_llm.io import atomic_open
from erc_llm.labelling.config import LabelConfig
from erc_llm.labelling.loop import Labelled, label_dialogues
from erc_llm.labelling.writer import ResumableWriter
from erc_llm.prompting.config import PromptConfig

ADAPTER_CONFIG_NAME = "erc_config.yaml"  # resolved SFT config saved beside the adapter by recipes/sft.py
ADAPTER_SUMMARY_NAME = "run_summary.json"  # holds the dev-fitted `label_bias` when the SFT run calibrated


def prompt_settings_for(cfg: LabelConfig):
    """(PromptConfig, RetrievalConfig | None): those the adapter was trained with when saved, else the run's own."""
    from erc_llm.prompting.dataset import load_prompt_settings

    saved = Path(cfg.adapter) / ADAPTER_CONFIG_NAME if cfg.adapter else None
    if saved is not None and cfg.prompt_from_adapter and saved.exists():
        return load_prompt_settings(saved)
    names = [f.name for f in dataclasses.fields(PromptConfig)]
    return PromptConfig(**{name: getattr(cfg, name) for name in names}), None


def prompt_config_for(cfg: LabelConfig) -> PromptConfig:
    """The prompt settings only (see `prompt_settings_for`)."""
    return prompt_settings_for(cfg)[0]


def adapter_label_bias(cfg: LabelConfig) -> dict[str, float] | None:
    """Per-label log-probability offsets fitted on dev by the SFT run (applied before the argmax), if any."""
    summary = Path(cfg.adapter) / ADAPTER_SUMMARY_NAME if cfg.adapter else None
    if summary is None or not summary.exists():
        return None
    return json.loads(summary.read_text()).get("label_bias") or None


class BiasedScorer:
    """Adds fixed per-label log-probability offsets to a scorer's probabilities and renormalises."""

    def __init__(self, scorer, bias: dict[str, float]) -> None:
        self.scorer = scorer
        self.bias = bias

    def score(self, prompts):
        """Biased per-label probabilities."""
        out = []
        for probs in self.scorer.score(prompts):
            logits = {k: math.log(max(v, 1e-12)) + self.bias.get(k, 0.0) for k, v in probs.items()}
            top = max(logits.values())
            weights = {k: math.exp(v - top) for k, v in logits.items()}
            total = sum(weights.values())
            out.append({k: w / total for k, w in weights.items()})
        return out


def _file_digest(folder: str | None) -> str | None:
    """Short content hash of an adapter's weights (resume guard)."""
    if not folder:
        return None
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("adapter_model.*")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _record(item: Labelled, gold: str | None) -> PredictionRecord:
    """Prediction record for one labelled utterance."""
    ex = item.example
    return PredictionRecord(
        dialogue_id=ex.dialogue_id, utterance_index=ex.index, speaker=ex.speaker, text=ex.text, pred=item.pred,
        gold=gold, utterance_id=ex.utterance_id, scores={k: round(v, 6) for k, v in item.scores.items()},
    )


def run_labelling(cfg: LabelConfig, command: str | None = None) -> Path:
    """Label the configured input; returns the run folder (resumes an interrupted run in place)."""
    from erc_llm.prompting.dataset import build_prompt_builder

    # ---- input -------------------------------------------------------------------------------------------
    label_set = get_label_set(cfg.labels) if cfg.labels else CORPORA[cfg.corpus].label_set
    loaded = load_split(cfg.corpus, cfg.split, cfg.data_dir, label_set=label_set)
    dialogues = loaded.dialogues[: cfg.max_dialogues] if cfg.max_dialogues else loaded.dialogues
    gold = {u.key: u.label for d in dialogues for u in d}
    order = [u.key for d in dialogues for u in d]

    # ---- prompts (speakers, biographies, demonstrations from the reference corpus's train split) -------
    prompt_cfg, retrieval_cfg = prompt_settings_for(cfg)
    reference = cfg.reference_corpus or (label_set.name if cfg.corpus.endswith(".jsonl") else cfg.corpus)
    builder = build_prompt_builder(prompt_cfg, reference, cfg.data_dir, index_dir=cfg.index_dir,
                                   retrieval=retrieval_cfg)
    label_bias = adapter_label_bias(cfg)

    # ---- resumable output ----------------------------------------------------------------------------------
    fingerprint = {
        "model": cfg.model, "adapter": cfg.adapter, "adapter_digest": _file_digest(cfg.adapter),
        "backend": cfg.backend, "prompt": dataclasses.asdict(prompt_cfg), "input": loaded.path,
        "split": cfg.split, "max_dialogues": cfg.max_dialogues, "labels": list(label_set.labels),
        "reference_corpus": reference, "label_bias": label_bias,
    }
    writer = ResumableWriter(cfg.output_dir, fingerprint)
    if writer.torn_lines:
        print(f"resume: dropped {writer.torn_lines} torn line(s) of an interrupted write", file=sys.stderr)
    done = {key: rec.pred for key, rec in writer.done.items()}
    remaining = len(order) - sum(1 for k in order if k in done)
    print(f"{len(order)} utterances in {len(dialogues)} dialogues; {len(order) - remaining} already labelled",
          file=sys.stderr)

    # ---- label ---------------------------------------------------------------------------------------------
    started = time.perf_counter()
    if remaining:
        from erc_llm.labelling.engines import make_engine

        engine = make_engine(cfg.backend, cfg.model, label_set.labels, adapter=cfg.adapter,
                             engine_args=cfg.engine_args, endpoint=cfg.endpoint, batch_size=cfg.batch_size,
                             lora_mode=cfg.lora_mode, served_model_name=cfg.served_model_name)
        engine_ready = time.perf_counter()
        scorer = BiasedScorer(engine, label_bias) if label_bias else engine
        label_dialogues(dialogues, builder, scorer, batch_size=cfg.batch_size, done=done,
                        on_batch=lambda items: writer.append(_record(i, gold[i.example.key]) for i in items))
    else:
        engine_ready = started
    finished = time.perf_counter()

    # ---- final files -------------------------------------------------------------------------------------------
    records = writer.finish(order)
    out = Path(cfg.output_dir)
    write_predictions(out / "predictions.jsonl", records)
    if cfg.write_csv:
        with atomic_open(out / "predictions.csv", newline="") as handle:
            w = csv.writer(handle)
            w.writerow(["dialogue_id", "utterance_index", "utterance_id", "speaker", "pred", "confidence", "model"])
            for r in records:
                w.writerow([r.dialogue_id, r.utterance_index, r.utterance_id, r.speaker, r.pred,
                            f"{(r.scores or {}).get(r.pred, 1.0):.4f}", cfg.adapter or cfg.model])
    labelled = [r for r in records if r.gold is not None]
    if labelled:
        metrics = compute_metrics([r.gold for r in labelled], [r.pred for r in labelled], label_set.labels)
        write_metrics(out, metrics, system=f"llm:{Path(cfg.adapter).name if cfg.adapter else cfg.model}",
                      corpus=label_set.name, split=cfg.split, command=command,
                      extra={"backend": cfg.backend, "model": cfg.model, "adapter": cfg.adapter,
                             "labelled_now": remaining, "label_bias": label_bias, "label_seconds": round(finished - engine_ready, 2),
                             "engine_start_seconds": round(engine_ready - started, 2),
                             "utterances_per_second": round(remaining / max(finished - engine_ready, 1e-9), 3),
                             "unlabelled_gold": len(records) - len(labelled)})
    writer.cleanup()
    return out
