"""CPU precision: bf16 requests run in float32 on a CPU without native bf16 (erc_llm.precision), in training and in
vLLM labelling, and the probe agrees with the CPU's own feature flags."""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import pytest

from erc_llm import precision
from erc_llm.labelling.config import LabelConfig
from erc_llm.labelling.run import engine_settings
from erc_llm.training.config import load_recipe
from erc_llm.training.steps import apply_cpu_precision

REPO = Path(__file__).resolve().parents[1]
QWEN_DEMO = REPO / "recipes" / "qwen2.5-coder-0.5b" / "sft" / "demo.yaml"
SMOKE = REPO / "recipes" / "smollm2-135m" / "sft" / "smoke.yaml"


@pytest.fixture(params=[True, False], ids=["native-bf16", "no-native-bf16"])
def native(request, monkeypatch) -> bool:
    """Both kinds of CPU: the probe answers as the parameter says."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: request.param)
    monkeypatch.delenv(precision.KEEP_BF16_ENV, raising=False)
    return request.param


@pytest.mark.skipif(platform.system() != "Linux", reason="reads /proc/cpuinfo")
def test_probe_agrees_with_the_cpu_flags() -> None:
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    assert precision.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_bf16_falls_back_to_float32_only_without_native_bf16(native, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="erc_llm.precision"):
        assert precision.cpu_dtype("bfloat16", "x") == ("bfloat16" if native else "float32")
    assert ("no native bf16" in caplog.text) == (not native)
    for other in ("float32", "float16", "auto", None):
        assert precision.cpu_dtype(other, "x") == other  # only bf16 requests are changed


def test_keep_bf16_overrides_the_fallback(native, monkeypatch) -> None:
    monkeypatch.setenv(precision.KEEP_BF16_ENV, "1")
    assert precision.cpu_dtype("bfloat16", "x") == "bfloat16"


def test_sft_weights_and_autocast(native) -> None:
    _, training_args, model_args = load_recipe(QWEN_DEMO)  # dtype: bfloat16, bf16: false, use_cpu
    asked = apply_cpu_precision(model_args, training_args)
    assert model_args.dtype == ("bfloat16" if native else "float32") and training_args.bf16 is False
    assert asked == ({} if native else {"dtype": "bfloat16"})  # what erc_config.yaml keeps: the recipe's value
    _, training_args, model_args = load_recipe(SMOKE)  # dtype: float32, bf16: true (autocast)
    asked = apply_cpu_precision(model_args, training_args)
    assert model_args.dtype == "float32" and training_args.bf16 is native
    assert asked == ({} if native else {"bf16": True})


def test_vllm_cpu_engine_settings(native) -> None:
    assert engine_settings(LabelConfig())["dtype"] == ("bfloat16" if native else "float32")
    assert engine_settings(LabelConfig(engine_args={"dtype": "float16"}))["dtype"] == "float16"
