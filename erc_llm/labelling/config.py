"""Configuration of a labelling run (`erc-llm label`, `recipes/label.py`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from erc_llm.prompting.config import PromptConfig

BACKENDS = ("vllm", "hf", "endpoint")


@dataclass
class LabelConfig(PromptConfig):
    """Label every utterance of some dialogues with a (fine-tuned) LLM.

    Input is any data name (`erc_llm.data.sources`): a corpus split (`corpus: meld`, `split: test`), a MELD- or
    EmoryNLP-style CSV, a JSONL file or a folder of split files. The label set is `labels`, else the one the
    adapter was trained on, else the one the data declares.
    The prompt settings are inherited fields; when `adapter` is an SFT output folder that saved its
    `erc_config.yaml`, its prompt and retrieval settings are used instead (`prompt_from_adapter`), so labelling prompts match
    training prompts. Output goes to `output_dir` (predictions.jsonl, metrics.json when gold labels exist);
    rerunning the same command resumes an interrupted run.
    """

    model: str = field(
        default="HuggingFaceTB/SmolLM2-135M-Instruct",
        metadata={"help": "Base model: hub id or local folder (offline ids resolve through erc_llm.offline_models)."},
    )
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter folder written by recipes/sft.py."})
    prompt_from_adapter: bool = field(
        default=True, metadata={"help": "Use the prompt settings saved beside the adapter (erc_config.yaml)."}
    )
    backend: str = field(default="vllm", metadata={"help": "vllm | hf (transformers label scoring) | endpoint."})
    endpoint: str | None = field(default=None, metadata={"help": "Base URL of a `vllm serve` for backend=endpoint."})
    served_model_name: str | None = field(
        default=None, metadata={"help": "Model name the endpoint serves (default: `model`)."}
    )
    lora_mode: str = field(
        default="auto", metadata={"help": "auto (merge on CPU, LoRARequest on GPU) | merge | lora_request."}
    )
    engine_args: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "Extra vllm.LLM arguments, e.g. {max_model_len: 2048, tensor_parallel_size: 2}."},
    )
    corpus: str = field(
        default="meld",
        metadata={"help": "Corpus name (meld, emorynlp, ...), a MELD/EmoryNLP-style .csv, a .jsonl file or a folder "
                          "of train/dev/test files."},
    )
    split: str = field(default="test", metadata={"help": "Split to label (a file without a split word is labelled "
                                                         "whole, under this split name)."})
    labels: str | None = field(
        default=None,
        metadata={"help": "Label set: meld, emorynlp, iemocap, a list a,b,c or a labels file (default: the adapter's, "
                          "else the one the data declares)."},
    )
    reference_corpus: str | None = field(
        default=None,
        metadata={"help": "Corpus whose train split gives speakers, biographies and demonstrations "
                          "(default: the input when it has a train split, else the adapter's training corpus)."},
    )
    data_dir: str | None = field(default=None, metadata={"help": "Corpus folder (default $ERC_LLM_DATA_DIR)."})
    index_dir: str | None = field(default=None, metadata={"help": "Where biography/demonstration indices live."})
    max_dialogues: int | None = field(default=None, metadata={"help": "Label only the first N dialogues."})
    batch_size: int = field(default=64, metadata={"help": "Prompts per engine call (one output fsync each)."})
    output_dir: str = field(default="runs/label", metadata={"help": "Run folder for the predictions."})
    write_csv: bool = field(default=False, metadata={"help": "Also write predictions.csv."})
    seed: int = field(default=0, metadata={"help": "Engine seed (decoding is greedy)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "endpoint" and not self.endpoint:
            raise ValueError("backend 'endpoint' needs `endpoint` (e.g. http://127.0.0.1:8000)")
        if isinstance(self.engine_args, str):
            self.engine_args = json.loads(self.engine_args)
        if self.engine_args is not None and not isinstance(self.engine_args, dict):
            raise ValueError("engine_args must be a mapping")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
