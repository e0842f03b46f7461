"""SFT recipe configuration: three dataclasses read from one flat YAML file by TRL's `TrlParser`.

* `ERCDataArguments` - which corpus and which prompts: every `PromptConfig` switch (template, windows, biography,
  history, demonstrations) plus corpus, splits and the training subsample.
* `ERCSFTConfig` - TRL's `SFTConfig` (so every `transformers.TrainingArguments` key works) plus our training
  fields: class weighting, batching, dev evaluation by label scoring, early stopping, merged export.
* `trl.ModelConfig` - model id, dtype, attention implementation, LoRA rank/alpha/dropout/targets, 4-bit QLoRA.

`parse_sft_args(["--config", "x.yaml", "--learning_rate", "1e-3"])` returns the three; a key that no dataclass
knows (in the YAML or on the command line) is an error.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from trl import ModelConfig, SFTConfig, TrlParser

from erc_llm.prompting.config import PromptConfig

SUBSAMPLE_STRATEGIES = ("random", "stratified", "sqrt", "balanced")
CLASS_WEIGHTINGS = ("none", "inverse", "sqrt_inverse")
BATCHINGS = ("padding_free", "length_grouped", "padded")
LOSS_NORMALIZERS = ("auto", "step_tokens", "mean_step_tokens")
LABEL_LOSSES = ("vocabulary", "label_set")


class SFTConfigError(ValueError):
    """An SFT recipe value is invalid (the message names the field)."""


@dataclass
class ERCDataArguments(PromptConfig):
    """Corpus, splits, training subsample and every prompt switch of `PromptConfig` (inherited)."""

    corpus: str = field(
        default="meld",
        metadata={"help": "Corpus name (meld, emorynlp, emorynlp-csv), a MELD/EmoryNLP-style .csv, a .jsonl file or a "
                          "folder of train/dev/test files."},
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Corpus folder; default $ERC_LLM_DATA_DIR or ~/.cache/erc_llm/data."}
    )
    labels: str | None = field(
        default=None,
        metadata={"help": "Label set: meld, emorynlp, iemocap, a list a,b,c or a labels file (default: the one the "
                          "data declares, else fitted to the training labels)."},
    )
    index_dir: str | None = field(
        default=None, metadata={"help": "Folder of built FAISS indices (biographies/demonstrations), if used."}
    )
    train_split: str = field(default="train", metadata={"help": "Split the model is trained on."})
    eval_split: str = field(default="dev", metadata={"help": "Split used for checkpoint selection (dev W-F1)."})
    test_split: str | None = field(
        default="test", metadata={"help": "Split labelled and scored after training (null: none)."}
    )
    train_subsample: int | None = field(
        default=None, metadata={"help": "Train on this many utterances (null: the whole training split)."}
    )
    train_subsample_strategy: str = field(
        default="stratified",
        metadata={
            "help": "How the subsample is drawn: 'random'; 'stratified' (class shares kept); 'sqrt' (class quota "
            "proportional to sqrt(count): rare classes up, neutral down); 'balanced' (equal quota per class)."
        },
    )
    subsample_seed: int = field(default=0, metadata={"help": "Seed of the training subsample."})
    eval_subsample: int | None = field(
        default=None,
        metadata={"help": "Dev selection on about this many utterances, whole dialogues drawn at random (null: all)."},
    )
    test_subsample: int | None = field(
        default=None, metadata={"help": "Score only about this many test utterances, whole dialogues (null: all)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.test_split, str) and self.test_split.lower() in ("none", "null", ""):
            self.test_split = None  # `--test_split None` on the command line: no test split, as in YAML
        if self.train_subsample_strategy not in SUBSAMPLE_STRATEGIES:
            raise SFTConfigError(
                f"train_subsample_strategy must be one of {SUBSAMPLE_STRATEGIES}, got {self.train_subsample_strategy!r}"
            )
        for name in ("train_subsample", "eval_subsample", "test_subsample"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SFTConfigError(f"{name} must be >= 1 or null, got {value}")
        if self.eval_split == self.train_split:
            raise SFTConfigError("eval_split must differ from train_split (selection on training data)")

    def prompt_config(self) -> PromptConfig:
        """The plain `PromptConfig` part (what the prompt builder and saved runs see)."""
        names = {f.name for f in dataclasses.fields(PromptConfig)}
        return PromptConfig(**{name: getattr(self, name) for name in names})


@dataclass
class ERCSFTConfig(SFTConfig):
    """TRL `SFTConfig` with ERC defaults and fields: label-only weighted loss, label-scoring dev selection."""

    # ---- overridden defaults (CPU-friendly; GPU recipes set their own) ----------------------------------
    learning_rate: float = field(default=2e-4, metadata={"help": "Initial AdamW learning rate (LoRA scale)."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in backward (saves memory, costs ~30 per cent of the speed)."}
    )
    max_length: int | None = field(
        default=1024,
        metadata={"help": "Longest training sequence; longer prompts lose their oldest tokens, never the label."},
    )
    metric_for_best_model: str | None = field(
        default="weighted_f1", metadata={"help": "Dev metric that selects the checkpoint (from label scoring)."}
    )
    greater_is_better: bool | None = field(default=True, metadata={"help": "Higher metric_for_best_model is better."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Experiment trackers to report to."})

    # ---- ERC fields -----------------------------------------------------------------------------------
    class_weighting: str = field(
        default="none",
        metadata={
            "help": "Per-example loss weight from the training subsample's label counts: 'none'; 'inverse' "
            "(w_c = N / (K * n_c)); 'sqrt_inverse' (w_c proportional to n_c^-1/2). Weights are normalised so that "
            "their mean over training examples is 1, then clipped to max_class_weight."
        },
    )
    label_loss: str = field(
        default="vocabulary",
        metadata={
            "help": "'vocabulary': cross-entropy over the whole vocabulary at every answer token; 'label_set': at "
            "each answer's first token a softmax over the labels' first tokens only (what labelling scores), so no "
            "step is spent moving mass onto the label words; later answer tokens keep the vocabulary loss. "
            "'label_set' needs labels whose first tokens differ."
        },
    )
    max_class_weight: float = field(
        default=10.0, metadata={"help": "Upper bound of a class weight after normalisation (rare-class spikes)."}
    )
    train_on_end_token: bool = field(
        default=True,
        metadata={"help": "Also train the chat template's end-of-turn token after the label (clean free generation)."},
    )
    batching: str = field(
        default="padding_free",
        metadata={
            "help": "'padding_free': a batch is one flat sequence with restarting position_ids (no pad tokens; "
            "transformers builds a block-diagonal causal mask for sdpa/eager, varlen kernels for flash-attn); "
            "'length_grouped': padded batches of similar lengths; 'padded': plain padded batches."
        },
    )
    balance_processes: bool = field(
        default=True,
        metadata={
            "help": "With a random training order (not length_grouped): inside each optimizer step, give each "
            "data-parallel process dialogues of near-equal total tokens (erc_llm.training.sampling). The same "
            "dialogues share a step as in any random order, so training is unchanged; processes wait less."
        },
    )
    group_steps_by_length: int = field(
        default=0,
        metadata={
            "help": "0: off. N > 0: within windows of N optimizer steps of the random order, put dialogues of "
            "similar length into the same step (window sorted by length, its steps shuffled), so data-parallel "
            "processes finish a step together. Unlike balance_processes this changes which dialogues share a step."
        },
    )
    loss_normalizer: str = field(
        default="auto",
        metadata={
            "help": "What a step's weighted answer-token loss is divided by. 'step_tokens': the step's own answer "
            "tokens (a mean per step; a line in a step of short dialogues weighs more than one among long ones); "
            "'mean_step_tokens': the training set's mean answer tokens per optimizer step, a constant, so every "
            "answer token weighs the same whichever step it is in; 'auto': mean_step_tokens with "
            "group_steps_by_length (which puts short dialogues together), else step_tokens."
        },
    )
    label_score_batch_size: int = field(
        default=32, metadata={"help": "Prompts per forward pass when scoring dev/test (left padding)."}
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without dev improvement (null: never)."}
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "Minimum dev metric gain that counts as an improvement."}
    )
    merge_adapter: bool = field(
        default=False,
        metadata={"help": "After test labelling, merge the saved adapter into a freshly loaded bf16 base on the CPU: "
                          "<output_dir>/merged for vLLM without PEFT (what `erc-llm merge --adapter` does)."},
    )
    calibrate_label_bias: bool = field(
        default=False,
        metadata={
            "help": "Fit per-label log-probability offsets on the selected checkpoint's dev predictions (max dev "
            "W-F1) and label the test split with them if a cross-fit on dev by dialogue halves shows a positive "
            "held-out gain (run_summary.json records the check); uncalibrated test scores are kept in metrics.json extra."
        },
    )
    packed_label_noise: float = field(
        default=0.0,
        metadata={
            "help": "Packed layout only: fraction of inline training labels shown to later lines replaced by a label "
            "drawn from the training distribution (against exposure bias: at test time inline labels are the "
            "model's own predictions); the loss at such a line still targets gold."
        },
    )
    packed_inline_predictions: str | None = field(
        default=None,
        metadata={
            "help": "Packed layout only: predictions.jsonl (or its run folder) of an earlier model on the training "
            "split (`erc-llm label --adapter <run> --split train`); its labels are shown inline in training in place "
            "of gold, so training sees the kind of inline errors labelling does (targets stay gold). Every training "
            "line needs a prediction."
        },
    )
    packed_inline_predictions_recipe: str | None = field(
        default=None,
        metadata={
            "help": "The recipe whose trained adapter wrote `packed_inline_predictions` (its labels of the training "
            "split): `erc-llm staged --config <this recipe>` trains it, labels the training split with it, then "
            "trains this recipe, skipping finished stages."
        },
    )
    packed_inline_self_predictions: float = field(
        default=0.0,
        metadata={
            "help": "Packed layout only: probability that a training line whose label the model gets wrong in this "
            "step is shown inline to later lines with the model's own prediction instead of gold (targets stay gold). "
            "The prediction comes from one extra forward pass per micro-batch without gradients over the gold-inline "
            "sequence (teacher-forced): the in-run alternative to packed_inline_predictions, with no earlier model "
            "and no labelling stage. Needs batching: padding_free and no other inline-label change."
        },
    )
    eval_at_start: bool = field(
        default=False, metadata={"help": "Score the dev split before the first step (zero-shot reference)."}
    )

    def __post_init__(self) -> None:
        if self.class_weighting not in CLASS_WEIGHTINGS:
            raise SFTConfigError(f"class_weighting must be one of {CLASS_WEIGHTINGS}, got {self.class_weighting!r}")
        if self.label_loss not in LABEL_LOSSES:
            raise SFTConfigError(f"label_loss must be one of {LABEL_LOSSES}, got {self.label_loss!r}")
        if self.batching not in BATCHINGS:
            raise SFTConfigError(f"batching must be one of {BATCHINGS}, got {self.batching!r}")
        if self.packing or self.padding_free:
            raise SFTConfigError(
                "packing/padding_free are TRL's own collators; this recipe batches with `batching` "
                "('padding_free' keeps examples separate) and trains on label tokens only"
            )
        if self.max_class_weight < 1.0:
            raise SFTConfigError(f"max_class_weight must be >= 1, got {self.max_class_weight}")
        if not 0.0 <= self.packed_label_noise < 1.0:
            raise SFTConfigError(f"packed_label_noise must be in [0, 1), got {self.packed_label_noise}")
        if not 0.0 <= self.packed_inline_self_predictions <= 1.0:
            raise SFTConfigError("packed_inline_self_predictions must be in [0, 1], got "
                                 f"{self.packed_inline_self_predictions}")
        if self.label_score_batch_size < 1:
            raise SFTConfigError("label_score_batch_size must be >= 1")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise SFTConfigError("early_stopping_patience must be >= 1 or null")
        if self.metric_for_best_model and self.metric_for_best_model.removeprefix("eval_") not in (
            "weighted_f1", "macro_f1", "accuracy"
        ):
            raise SFTConfigError(
                f"metric_for_best_model must be weighted_f1, macro_f1 or accuracy, got {self.metric_for_best_model!r}"
            )
        if self.group_steps_by_length < 0:
            raise SFTConfigError(f"group_steps_by_length must be >= 0, got {self.group_steps_by_length}")
        if self.loss_normalizer not in LOSS_NORMALIZERS:
            raise SFTConfigError(f"loss_normalizer must be one of {LOSS_NORMALIZERS}, got {self.loss_normalizer!r}")
        if self.group_steps_by_length and self.loss_normalizer == "step_tokens":
            raise SFTConfigError("group_steps_by_length needs loss_normalizer: mean_step_tokens (with a mean per step, "
                                 "steps of short dialogues give each of their lines several times the weight)")
        if self.group_steps_by_length and self.batching == "length_grouped":
            raise SFTConfigError("group_steps_by_length groups steps of the random order; batching: length_grouped "
                                 "already orders by length (use one of them)")
        # Prompts are rendered and tokenised here (label-only labels, weights); TRL must not re-tokenise them.
        self.dataset_kwargs = {**(self.dataset_kwargs or {}), "skip_prepare_dataset": True}
        if self.batching == "length_grouped":
            self.train_sampling_strategy = "group_by_length"
        super().__post_init__()
        if self.early_stopping_patience is not None and (self.eval_strategy == "no" or not self.load_best_model_at_end):
            raise SFTConfigError("early_stopping_patience needs eval_strategy != 'no' and load_best_model_at_end: true")

    @property
    def step_loss_normalizer(self) -> str:
        """`loss_normalizer` with 'auto' resolved (kept as 'auto' in the saved settings, so older runs still match)."""
        if self.loss_normalizer != "auto":
            return self.loss_normalizer
        return "mean_step_tokens" if self.group_steps_by_length else "step_tokens"


@dataclass
class ERCModelConfig(ModelConfig):
    """TRL `ModelConfig` (model id, dtype, attention, LoRA, 4-bit) plus where the LoRA adapters go."""

    lora_top_layers: int | None = field(
        default=None,
        metadata={
            "help": "Put LoRA only on the top N transformer layers (null: all). Backward then stops at the lowest "
            "adapted layer, which cuts training time roughly in proportion on CPU."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lora_top_layers is not None and self.lora_top_layers < 1:
            raise SFTConfigError("lora_top_layers must be >= 1 or null")


SFT_DATACLASSES = (ERCDataArguments, ERCSFTConfig, ERCModelConfig)


def sft_parser() -> TrlParser:
    """The parser for `recipes/sft.py` (YAML via --config, CLI overrides win)."""
    return TrlParser(SFT_DATACLASSES)


def parse_sft_args(argv: Sequence[str] | None = None) -> tuple[ERCDataArguments, ERCSFTConfig, ERCModelConfig]:
    """Parse `--config x.yaml` plus overrides (sys.argv when None); unknown keys raise."""
    data_args, training_args, model_args = sft_parser().parse_args_and_config(
        args=None if argv is None else list(argv), fail_with_unknown_args=True
    )
    validate_model_args(model_args, training_args)
    t = training_args
    if data_args.layout != "packed" and (t.packed_inline_predictions or t.packed_label_noise
                                         or t.packed_inline_self_predictions):
        raise SFTConfigError("packed_inline_predictions / packed_label_noise / packed_inline_self_predictions change "
                             f"the inline labels of the packed layout; this run uses layout: {data_args.layout} (set "
                             "them to None / 0)")
    if t.packed_inline_self_predictions and (t.packed_inline_predictions or t.packed_label_noise
                                             or t.batching != "padding_free"):
        raise SFTConfigError("packed_inline_self_predictions replaces gold inline labels in padding-free batches: "
                             "set batching: padding_free, packed_label_noise: 0 and packed_inline_predictions: null")
    return data_args, training_args, model_args


def validate_model_args(model_args: ERCModelConfig, training_args: ERCSFTConfig) -> None:
    """Checks across dataclasses that TRL leaves to run time."""
    if not model_args.model_name_or_path:
        raise SFTConfigError("model_name_or_path is required")
    if model_args.load_in_4bit and not model_args.use_peft:
        raise SFTConfigError("load_in_4bit (QLoRA) trains LoRA adapters: set use_peft: true")
    if model_args.load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
        raise SFTConfigError("load_in_4bit (QLoRA) needs bitsandbytes: pip install 'erc_llm[gpu]' (CUDA) or "
                             "bitsandbytes==0.50.2 (its CPU backend also loads 4-bit here)")
    validate_attention(model_args)
    validate_launch(training_args, model_args)
    if training_args.merge_adapter and not model_args.use_peft:
        raise SFTConfigError("merge_adapter needs use_peft: true (a full fine-tune is already a full model)")


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> tuple[ERCDataArguments, ERCSFTConfig, ERCModelConfig]:
    """Parse a recipe YAML (as `recipes/sft.py --config path` would)."""
    return parse_sft_args(["--config", str(path), *overrides])


def plain_value(value: Any) -> Any:
    """A setting as erc_config.yaml saves it: JSON/YAML scalars and containers as they are, anything else as str."""
    return value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)


def resolved_config(*configs: Any) -> dict[str, Any]:
    """All fields of the parsed dataclasses as one flat JSON/YAML-ready dict (saved beside the adapter)."""
    out: dict[str, Any] = {}
    for cfg in configs:
        values = cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)
        for key, value in values.items():
            out[key] = plain_value(value)
    return out


def dump_yaml(data: dict[str, Any]) -> str:
    """YAML text of a resolved config (sorted keys)."""
    return yaml.safe_dump(data, sort_keys=True, allow_unicode=True)


# Settings that name where a run writes, not what it trains: ignored when saved settings are matched.
WHERE_FIELDS = frozenset({"output_dir", "logging_dir", "run_name", "hub_model_id"})
# Settings that tune how a step is distributed or reported, never its numbers (DDP's graph search for unused
# parameters, bucket size and timeout; logging): a run that differs only in them is the same experiment.
PLUMBING_FIELDS = frozenset({"ddp_find_unused_parameters", "ddp_bucket_cap_mb", "ddp_timeout", "logging_steps",
                             "disable_tqdm", "report_to"})
_MISSING = object()


def field_defaults() -> dict[str, Any]:
    """Default value of every SFT setting, serialised as erc_config.yaml saves it."""
    out: dict[str, Any] = {}
    for cls in (ERCDataArguments, ERCSFTConfig, ERCModelConfig):
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                continue
            out[f.name] = plain_value(value)
    return yaml.safe_load(yaml.safe_dump(out)) or {}


def settings_match(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """True when a saved resolved config (erc_config.yaml's content) holds the settings of `wanted` (a
    `resolved_config` of today's arguments), where the run writes and how it is distributed or logged aside; a
    setting the toolkit gained after the config was saved counts as its default."""
    wanted = yaml.safe_load(dump_yaml(dict(wanted))) or {}  # compared as saved: through YAML
    defaults = field_defaults()
    return all(saved.get(key, defaults.get(key, _MISSING)) == value
               for key, value in wanted.items() if key not in WHERE_FIELDS | PLUMBING_FIELDS)


def saved_run_matches(run_dir: str | Path, wanted: Mapping[str, Any]) -> bool:
    """True when the run folder's saved erc_config.yaml holds the settings of `wanted` (`settings_match`)."""
    saved_path = Path(run_dir) / "erc_config.yaml"
    if not saved_path.is_file():
        return False
    return settings_match(yaml.safe_load(saved_path.read_text()) or {}, wanted)


# ---- hardware and launcher checks (run at parse time, before any model is loaded) -------------------------
FLASH_ATTENTION = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


def validate_attention(model_args: ERCModelConfig) -> None:
    """Refuse an attention implementation whose kernels are not installed (transformers would otherwise try to
    fetch them from the hub at `from_pretrained`, which fails offline). sdpa handles padding-free batches too."""
    attn = model_args.attn_implementation
    if attn in FLASH_ATTENTION and importlib.util.find_spec(FLASH_ATTENTION[attn]) is None:
        raise SFTConfigError(
            f"attn_implementation: {attn} needs the `{FLASH_ATTENTION[attn].split('_interface')[0]}` package, "
            "which is not installed (the `gpu` extra does not pull it: it compiles against your CUDA). Use "
            "attn_implementation: sdpa (padding-free batches work with it), or pip install flash-attn"
        )
    if attn and attn.startswith("kernels-community/") and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise SFTConfigError(f"attn_implementation: {attn} downloads a kernel from the hub, which is offline here")


def _truthy(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes")


def sharding_launch(training_args: ERCSFTConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """'FSDP' or 'DeepSpeed ZeRO-3' when this run is launched to shard parameters, else None."""
    env = os.environ if environ is None else environ
    if training_args.fsdp or _truthy(env.get("ACCELERATE_USE_FSDP")):
        return "FSDP"
    stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    ds = training_args.deepspeed
    if isinstance(ds, str) and ds.endswith(".json") and os.path.isfile(ds):
        import json

        stage = str(json.loads(open(ds).read()).get("zero_optimization", {}).get("stage", stage))
    elif isinstance(ds, dict):
        stage = str(ds.get("zero_optimization", {}).get("stage", stage))
    if (ds or _truthy(env.get("ACCELERATE_USE_DEEPSPEED"))) and str(stage) == "3":
        return "DeepSpeed ZeRO-3"
    return None


def validate_launch(training_args: ERCSFTConfig, model_args: ERCModelConfig,
                    environ: Mapping[str, str] | None = None) -> None:
    """Refuse launchers the recipe cannot run under, with the reason and what to use instead.

    FSDP and ZeRO-3 shard every weight over the processes, so every forward pass is a collective step of all of
    them. This recipe's dev/test label scoring gives each process its own share of each round's prompts, so the
    processes run different numbers of forward passes (a hang under sharding); FSDP's SHARDED_STATE_DICT also
    writes no adapter_model.safetensors. A 3B LoRA/QLoRA run fits one GPU per process, so DDP
    (`accelerate_configs/multi_gpu.yaml`) is the multi-GPU path.
    """
    kind = sharding_launch(training_args, environ)
    if kind is not None:
        raise SFTConfigError(
            f"{kind} is not supported by recipes/sft.py: parameter sharding needs every process in every forward "
            "pass, but dev/test label scoring runs a different number of forward passes on each process. A 3B "
            "LoRA/QLoRA run fits one GPU per process: launch with recipes/accelerate_configs/multi_gpu.yaml (DDP)"
        )
