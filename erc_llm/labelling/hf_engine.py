"""The transformers backend: constrained label scoring in one forward pass per prompt (batched).

For machines without vLLM and for the SFT dev evaluation. A LoRA adapter is merged into the weights at load
time (the same numbers as the unmerged model, faster on CPU).
"""

from __future__ import annotations

from collections.abc import Sequence

Messages = list[dict[str, str]]


class HFEngine:
    """`score` via `HFLabelScorer`; `generate` via `model.generate` (greedy by default)."""

    def __init__(self, model: str, labels: Sequence[str], adapter: str | None = None, batch_size: int = 16,
                 dtype: str = "float32", device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from erc_llm.labelling.scorers import HFLabelScorer
        from erc_llm.offline_models import resolve_model

        path = resolve_model(model)
        self.labels = tuple(labels)
        self.tokenizer = AutoTokenizer.from_pretrained(adapter if adapter and _has_tokenizer(adapter) else path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        if adapter:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, adapter).merge_and_unload()
        self.model.to(device).eval()
        self.scorer = HFLabelScorer(self.model, self.tokenizer, self.labels, batch_size=batch_size)

    def score(self, prompts: Sequence[Messages]) -> list[dict[str, float]]:
        """Per-label probabilities."""
        return self.scorer.score(prompts)

    def score_streams(self, items: Sequence[tuple[str, Messages]]) -> list[dict[str, float]]:
        """Packed layout: per-label probabilities with one kept KV cache per dialogue (`HFPackedScorer`)."""
        if getattr(self, "_packed", None) is None:
            from erc_llm.labelling.scorers import HFPackedScorer

            self._packed = HFPackedScorer(self.model, self.tokenizer, self.labels)
        return self._packed.score_streams(items)

    def end_streams(self, streams: Sequence[str]) -> None:
        """Free finished dialogues' caches."""
        if getattr(self, "_packed", None) is not None:
            self._packed.end_streams(streams)

    def generate(self, prompts: Sequence[Messages], max_tokens: int = 256, temperature: float = 0.0) -> list[str]:
        """Free-text replies, one prompt at a time (biographies are few)."""
        import torch

        from erc_llm.prompting.templates import apply_chat_template

        replies = []
        for messages in prompts:
            ids = apply_chat_template(self.tokenizer, messages, add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True).to(self.model.device)
            with torch.inference_mode():
                out = self.model.generate(**ids, max_new_tokens=max_tokens, do_sample=temperature > 0,
                                          temperature=temperature if temperature > 0 else None,
                                          pad_token_id=self.tokenizer.eos_token_id)
            replies.append(self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
        return replies


def _has_tokenizer(folder: str) -> bool:
    """Whether an adapter folder carries its own tokenizer files."""
    from pathlib import Path

    return (Path(folder) / "tokenizer_config.json").exists()
