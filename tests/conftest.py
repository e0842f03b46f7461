"""Shared fixtures: the real corpora in ../shared/data (or $ERC_LLM_DATA_DIR), offline hub settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def shared_data_dir() -> Path:
    """The real corpus folder used by tests and benchmarks."""
    return Path(os.environ.get("ERC_LLM_DATA_DIR") or REPO_ROOT.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not (path / "meld" / "train.csv").exists():
        pytest.fail(f"real corpora not found at {path}; set ERC_LLM_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def smoke_adapter(tmp_path_factory, data_dir) -> Path:
    """A LoRA adapter trained by the real SFT recipe (smoke config, one process, a few steps on MELD)."""
    from watched import run_sft

    out = run_sft(tmp_path_factory.mktemp("sft-smoke"), data_dir=data_dir, threads=None, timeout=1200)
    assert (out / "adapter_config.json").exists(), sorted(p.name for p in out.iterdir())
    return out
