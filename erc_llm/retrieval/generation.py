"""Batch text generators for LLM biographies: transformers (greedy, CPU or GPU) and the vLLM labelling engine.

Any callable `generate(prompts: list[list[dict]]) -> list[str]` works; `make_biography_generator` picks the
one `LLMBiographyConfig.backend` names. Both run the PyPI-shipped SmolLM2 offline by default.
"""

from __future__ import annotations

from typing import Any

from erc_llm.retrieval.config import DEFAULT_BIOGRAPHY_LLM, LLMBiographyConfig

REPETITION_PENALTY = 1.1  # both backends: small models loop without it


class TransformersGenerator:
    """Greedy chat generation with a local causal LM; loaded on first call."""

    def __init__(self, model: str = DEFAULT_BIOGRAPHY_LLM, max_new_tokens: int = 96, batch_size: int = 8,
                 repetition_penalty: float = REPETITION_PENALTY, device: str | None = None) -> None:
        self.model_name = model
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.repetition_penalty = repetition_penalty
        self.device = device
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def name(self) -> str:
        """Provenance string stored in the biography header."""
        return (f"transformers:{self.model_name} greedy max_new_tokens={self.max_new_tokens} "
                f"repetition_penalty={self.repetition_penalty}")

    def _load(self) -> None:
        """Resolve (offline) and load the model and tokenizer once."""
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from erc_llm.offline_models import resolve_model

        path = resolve_model(self.model_name)
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32 if device == "cpu" else "auto")
        self._model, self._tokenizer, self.device = model.to(device).eval(), tokenizer, device

    def __call__(self, prompts: list[list[dict[str, str]]]) -> list[str]:
        """One reply per chat prompt, in order."""
        import torch

        self._load()
        tok, model = self._tokenizer, self._model
        replies: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                     for p in prompts[start:start + self.batch_size]]
            batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            with torch.inference_mode():
                out = model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False,
                                     repetition_penalty=self.repetition_penalty, pad_token_id=tok.pad_token_id)
            new_tokens = out[:, batch["input_ids"].shape[1]:]
            replies.extend(t.strip() for t in tok.batch_decode(new_tokens, skip_special_tokens=True))
        return replies


class VLLMGenerator:
    """Greedy chat generation with the labelling engine (`VLLMEngine`, generation only); started on first call.

    All prompts of a call go to vLLM as one batch (continuous batching, prefix caching), so `batch_size` of the
    biography config only sets how often progress is reported.
    """

    def __init__(self, model: str = DEFAULT_BIOGRAPHY_LLM, max_new_tokens: int = 96,
                 repetition_penalty: float = REPETITION_PENALTY, engine_args: dict[str, Any] | None = None) -> None:
        self.model_name = model
        self.max_new_tokens = max_new_tokens
        self.repetition_penalty = repetition_penalty
        self.engine_args = {"max_model_len": 2048, **(engine_args or {})}
        self._engine: Any = None

    @property
    def name(self) -> str:
        """Provenance string stored in the biography header."""
        return (f"vllm:{self.model_name} greedy max_new_tokens={self.max_new_tokens} "
                f"repetition_penalty={self.repetition_penalty}")

    def __call__(self, prompts: list[list[dict[str, str]]]) -> list[str]:
        """One reply per chat prompt, in order."""
        if self._engine is None:
            from erc_llm.labelling.engines import VLLMEngine

            self._engine = VLLMEngine(self.model_name, labels=(), engine_args=self.engine_args)
        return self._engine.generate(prompts, max_tokens=self.max_new_tokens, temperature=0.0,
                                     repetition_penalty=self.repetition_penalty)


def make_biography_generator(config: LLMBiographyConfig) -> TransformersGenerator | VLLMGenerator:
    """The generator `config.backend` names, with the config's model and length."""
    if config.backend == "vllm":
        return VLLMGenerator(config.model, config.max_new_tokens)
    return TransformersGenerator(config.model, config.max_new_tokens, config.batch_size)
