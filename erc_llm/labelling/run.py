"""A labelling run: input dialogues -> prompts -> engine -> resumable predictions -> metrics."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

from erc_llm.data.corpora import CORPORA
from erc_llm.data.labels import LABEL_SETS, LabelSet
from erc_llm.data.sources import DataSource, DataSourceError, resolve_source
from erc_llm.evaluation.metrics import compute_metrics
from erc_llm.evaluation.rundir import PredictionRecord, write_metrics, write_predictions
from erc_llm.io import atomic_open
from erc_llm.labelling.bias import BiasedScorer
from erc_llm.labelling.config import LabelConfig
from erc_llm.labelling.loop import Labelled, label_dialogues
from erc_llm.labelling.writer import ResumableWriter
from erc_llm.prompting.config import PromptConfig

ADAPTER_CONFIG_NAME = "erc_config.yaml"  # resolved SFT config saved beside the adapter by recipes/sft.py
ADAPTER_SUMMARY_NAME = "run_summary.json"  # holds the dev-fitted `label_bias` when the SFT run calibrated


def prompt_settings_for(cfg: LabelConfig):
    """(PromptConfig, RetrievalConfig | None) of a labelling run. The rule, in one place:

    * with an adapter that saved its `erc_config.yaml` (and `prompt_from_adapter`, the default), the adapter's
      prompt and retrieval settings are the default, so labelling prompts match training prompts; prompt keys in
      the label YAML do not change them;
    * a prompt setting given explicitly on the command line (`--use_history false`) wins over the adapter's, and a
      notice on stderr says which setting now differs from training;
    * without a saved adapter config, the run's own settings (YAML and command line) are used.
    """
    from erc_llm.prompting.dataset import load_prompt_settings

    names = [f.name for f in dataclasses.fields(PromptConfig)]
    saved = Path(cfg.adapter) / ADAPTER_CONFIG_NAME if cfg.adapter else None
    if saved is None or not cfg.prompt_from_adapter or not saved.exists():
        return PromptConfig(**{name: getattr(cfg, name) for name in names}), None
    prompt, retrieval = load_prompt_settings(saved)
    given = sorted(set(getattr(cfg, "command_line_keys", ())) & set(names))
    changed = {name: getattr(cfg, name) for name in given if getattr(cfg, name) != getattr(prompt, name)}
    for name, value in changed.items():
        print(f"notice: prompt setting {name}={value!r} from the command line overrides the adapter's "
              f"{getattr(prompt, name)!r} ({saved}): labelling prompts now differ from training prompts",
              file=sys.stderr)
    return (dataclasses.replace(prompt, **changed) if changed else prompt), retrieval


def prompt_config_for(cfg: LabelConfig) -> PromptConfig:
    """The prompt settings only (see `prompt_settings_for`)."""
    return prompt_settings_for(cfg)[0]


def adapter_label_bias(cfg: LabelConfig) -> dict[str, float] | None:
    """Per-label log-probability offsets fitted on dev by the SFT run (applied before the argmax), if any."""
    summary = Path(cfg.adapter) / ADAPTER_SUMMARY_NAME if cfg.adapter else None
    if summary is None or not summary.exists():
        return None
    return json.loads(summary.read_text()).get("label_bias") or None


def _file_digest(folder: str | None) -> str | None:
    """Short content hash of an adapter's weights (resume guard)."""
    if not folder:
        return None
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("adapter_model.*")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _record(item: Labelled, gold: str | None, meta: dict | None = None) -> PredictionRecord:
    """Prediction record for one labelled utterance (with the input utterance's `meta`, if any)."""
    ex = item.example
    return PredictionRecord(
        dialogue_id=ex.dialogue_id, utterance_index=ex.index, speaker=ex.speaker, text=ex.text, pred=item.pred,
        gold=gold, utterance_id=ex.utterance_id, scores={k: round(v, 6) for k, v in item.scores.items()},
        meta=meta or None,
    )


def adapter_labels(adapter: str | None) -> list[str] | None:
    """The label list an SFT adapter was trained on (recorded in its metrics.json or dev/metrics.json)."""
    for name in ("metrics.json", "dev/metrics.json"):
        path = Path(adapter) / name if adapter else None
        if path is not None and path.is_file():
            labels = json.loads(path.read_text(encoding="utf-8")).get("labels")
            if labels:
                return [str(label) for label in labels]
    return None


def adapter_corpus(adapter: str | None) -> tuple[str, str | None] | None:
    """(corpus, data_dir) an SFT adapter was trained on (its erc_config.yaml), if recorded."""
    path = Path(adapter) / ADAPTER_CONFIG_NAME if adapter else None
    if path is None or not path.is_file():
        return None
    import yaml

    saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return (str(saved["corpus"]), saved.get("data_dir")) if saved.get("corpus") else None


def resolve_label_input(cfg: LabelConfig) -> tuple[DataSource, LabelSet, str, str | None]:
    """(input source, label set, reference corpus, its data_dir) of a labelling run.

    Labels: `cfg.labels`, else the adapter's training labels, else the set the input declares. Reference (whose
    train split gives speakers, biographies and demonstrations): `cfg.reference_corpus`, else the input when it
    has a train split, else the adapter's training corpus, else the corpus of a known label set.
    """
    source = resolve_source(cfg.corpus, split=cfg.split, labels=cfg.labels, data_dir=cfg.data_dir)
    trained = adapter_labels(cfg.adapter)
    if cfg.labels:
        label_set = source.label_set
    elif trained:
        known = [s for s in LABEL_SETS.values() if list(s.labels) == trained]
        label_set = known[0] if known else LabelSet.from_labels(source.run_name, trained)
    elif source.label_set is not None:
        label_set = source.label_set
    else:
        raise DataSourceError(f"{cfg.corpus}: no label set; pass --labels NAME|a,b,c, an --adapter trained by "
                              "recipes/sft.py, or declare it in the data (labels.txt beside the file, or a first "
                              'JSONL line {"labels": [...]})')
    saved = adapter_corpus(cfg.adapter)
    if cfg.reference_corpus:
        return source, label_set, cfg.reference_corpus, cfg.data_dir
    if source.has_split("train"):
        return source, label_set, cfg.corpus, cfg.data_dir
    if saved is not None:
        return source, label_set, saved[0], cfg.data_dir or saved[1]
    if label_set.name in CORPORA:
        return source, label_set, label_set.name, cfg.data_dir
    raise DataSourceError(f"{cfg.corpus} has no train split to take speakers and biographies from; pass "
                          "--reference_corpus (the corpus the adapter was trained on) or an --adapter with its "
                          "erc_config.yaml")


def run_labelling(cfg: LabelConfig, command: str | None = None) -> Path:
    """Label the configured input; returns the run folder (resumes an interrupted run in place)."""
    from erc_llm.prompting.dataset import build_prompt_builder

    # ---- input -------------------------------------------------------------------------------------------
    source, label_set, reference, reference_data_dir = resolve_label_input(cfg)
    loaded = source.load(cfg.split, label_set=label_set)
    dialogues = loaded.dialogues[: cfg.max_dialogues] if cfg.max_dialogues else loaded.dialogues
    gold = {u.key: u.label for d in dialogues for u in d}
    metas = {u.key: u.meta for d in dialogues for u in d if u.meta}
    order = [u.key for d in dialogues for u in d]

    # ---- prompts (speakers, biographies, demonstrations from the reference corpus's train split) -------
    prompt_cfg, retrieval_cfg = prompt_settings_for(cfg)
    builder = build_prompt_builder(prompt_cfg, reference, reference_data_dir, index_dir=cfg.index_dir,
                                   retrieval=retrieval_cfg, label_set=label_set)
    label_bias = adapter_label_bias(cfg)

    # ---- resumable output ----------------------------------------------------------------------------------
    fingerprint = run_fingerprint(cfg, prompt_cfg, retrieval_cfg, builder, loaded.path, list(label_set.labels),
                                  reference, label_bias)
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
        def on_batch(items: list[Labelled]) -> None:
            writer.append(_record(i, gold[i.example.key], metas.get(i.example.key)) for i in items)

        if prompt_cfg.layout == "packed":
            from erc_llm.labelling.packed import label_dialogues_packed

            label_dialogues_packed(dialogues, builder, scorer, done=done, on_batch=on_batch)
        else:
            label_dialogues(dialogues, builder, scorer, batch_size=cfg.batch_size, done=done, on_batch=on_batch)
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
                      corpus=source.run_name, split=cfg.split, command=command,
                      extra={"backend": cfg.backend, "model": cfg.model, "adapter": cfg.adapter,
                             "labelled_now": remaining, "label_bias": label_bias, "label_seconds": round(finished - engine_ready, 2),
                             "engine_start_seconds": round(engine_ready - started, 2),
                             "utterances_per_second": round(remaining / max(finished - engine_ready, 1e-9), 3),
                             "unlabelled_gold": len(records) - len(labelled)})
    writer.cleanup()
    return out


def run_fingerprint(cfg: LabelConfig, prompt_cfg: PromptConfig, retrieval_cfg, builder, input_path, labels: list[str],
                    reference: str, label_bias: dict[str, float] | None) -> dict:
    """What must not change between an interrupted labelling run and its resume: model and adapter (contents),
    prompt settings and the template's text, the chat-template variables (pinned date), retrieval settings and
    the index actually loaded, and the engine with its resolved dtype and arguments."""
    from erc_llm.prompting.templates import chat_template_kwargs, find_template

    def digest(data) -> str:
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]

    merged_info = Path(cfg.model) / "merge_info.json"
    indices = []
    for source in (builder.biographies, builder.demonstrations):
        manifest = getattr(getattr(source, "index", None), "manifest", None)
        if manifest:
            indices.append(digest({k: v for k, v in manifest.items() if "seconds" not in k and "_at" not in k}))
    return {
        "model": cfg.model, "adapter": cfg.adapter, "adapter_digest": _file_digest(cfg.adapter),
        "merged_from": json.loads(merged_info.read_text()).get("adapter_digest") if merged_info.is_file() else None,
        "backend": cfg.backend, "engine": engine_settings(cfg), "prompt": dataclasses.asdict(prompt_cfg),
        "template_sha256": hashlib.sha256(find_template(prompt_cfg.template).read_bytes()).hexdigest()[:16],
        "chat_template_kwargs": chat_template_kwargs(),
        "retrieval": dataclasses.asdict(retrieval_cfg) if retrieval_cfg is not None else None,
        "index": sorted(set(indices)), "input": input_path, "split": cfg.split, "max_dialogues": cfg.max_dialogues,
        "labels": labels, "reference_corpus": reference, "label_bias": label_bias,
    }


def engine_settings(cfg: LabelConfig) -> dict:
    """The engine arguments a run resolves to (defaults included), without starting an engine."""
    from erc_llm.labelling.engines import hf_engine_placement, vllm_engine_args

    if cfg.backend == "hf":
        dtype, device = hf_engine_placement(cfg.engine_args)
        return {"dtype": dtype, "device": device, "batch_size": cfg.batch_size}
    if cfg.backend == "endpoint":
        return {"endpoint": cfg.endpoint, "served_model_name": cfg.served_model_name}
    import torch

    return {**vllm_engine_args(cfg.engine_args, on_cpu=not torch.cuda.is_available()), "lora_mode": cfg.lora_mode,
            "seed": cfg.seed}
