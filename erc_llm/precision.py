"""CPU precision: bfloat16 only where the CPU computes it in hardware (AVX512-BF16 or AMX), float32 elsewhere.

The recipes and the vLLM CPU defaults ask for bfloat16 because the machines the recorded runs came from have AMX
or AVX512-BF16, where bf16 matmuls are the fast path. A CPU without them emulates bf16: on an AMD EPYC (Zen 3, AVX2
only; 2026-12-07) a 512x1536 by 1536x8960 matmul took 673-683 ms in bf16 against 101 ms in float32, and a step of
the demo SFT recipe 217 s against 9.4 s (23x; `python evaluation/bench_cpu_precision.py`,
evaluation/bench_cpu_precision.json). So a bf16 request on such a CPU runs in float32, with a warning, unless
`ERC_LLM_KEEP_BF16=1` (e.g. to reproduce a recorded run's numerics bit for bit).
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

KEEP_BF16_ENV = "ERC_LLM_KEEP_BF16"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matmul instructions (AVX512-BF16 or AMX tiles)."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def cpu_dtype(requested: str | None, what: str) -> str | None:
    """The dtype to run `what` in on this CPU: `requested`, except bfloat16 -> float32 without native bf16."""
    if requested != "bfloat16" or cpu_has_native_bf16() or os.environ.get(KEEP_BF16_ENV) == "1":
        return requested
    logger.warning("%s: this CPU has no native bf16 (AVX512-BF16/AMX), where bf16 training steps were 23x slower "
                   "than float32; running in float32 instead (set %s=1 to keep bf16)", what, KEEP_BF16_ENV)
    return "float32"
