"""Where erc_llm reads data and keeps caches; every location can be overridden by flag or env var."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "ERC_LLM_DATA_DIR"
CACHE_DIR_ENV = "ERC_LLM_CACHE"


def cache_root() -> Path:
    """Root of erc_llm's caches: $ERC_LLM_CACHE, else ~/.cache/erc_llm."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "erc_llm").expanduser()


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """Corpus folder: the explicit argument (CLI --data-dir), else $ERC_LLM_DATA_DIR, else <cache>/data."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return cache_root() / "data"
