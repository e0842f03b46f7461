"""Where a run came from: the erc_llm checkout it imported (path, git commit, uncommitted changes), the script
that started it, package versions, the machine and the command line. Recorded in run_summary.json.

A script run from one checkout can import erc_llm from another: an editable install (`pip install -e .`) points
Python at the checkout it was made from, so `python /elsewhere/recipes/sft.py` trains with that checkout's library
and prompt files unless PYTHONPATH names /elsewhere. `library_mismatch` says so before a long run starts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import erc_llm

PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "vllm", "faiss-cpu")


def library_dir() -> Path:
    """The erc_llm package directory this process imported."""
    return Path(erc_llm.__file__).resolve().parent


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> str:
    """CPU model and core count, e.g. 'AMD EPYC, 2 cores'."""
    return f"{cpu_model()}, {os.cpu_count()} cores"


def _git(cwd: Path, *args: str) -> str | None:
    """`git -C cwd args...` output, or None (git missing, not a checkout, or it failed)."""
    try:
        out = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def checkout_root(path: Path) -> Path | None:
    """The git work tree that holds `path`, or None (not in a checkout, or no git)."""
    top = _git(path, "rev-parse", "--show-toplevel")
    return Path(top).resolve() if top else None


def git_state(root: Path) -> dict[str, Any]:
    """Commit of the work tree at `root` and whether tracked files differ from it (None when unknown)."""
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {"git_commit": _git(root, "rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status)}


def library_mismatch(script: Path) -> str | None:
    """A warning when `script` lives in a checkout other than the one erc_llm was imported from, else None."""
    script_root = checkout_root(Path(script).resolve().parent)
    library_root = checkout_root(library_dir())
    if script_root is None or library_root is None or script_root == library_root:
        return None
    return (f"{script} is in the checkout {script_root}, but erc_llm (code and prompt files) is imported from "
            f"{library_root}; run with PYTHONPATH={script_root} to use this checkout's library")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages a run's numbers depend on (None: not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_provenance(script: Path | None = None) -> dict[str, Any]:
    """Everything above as one JSON-ready dict (git fields are None outside a checkout)."""
    library = library_dir()
    root = checkout_root(library)
    record: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "library": str(library),
        **(git_state(root) if root else {"git_commit": None, "git_dirty": None}),
        "script": str(Path(script).resolve()) if script else None,
        "library_mismatch": library_mismatch(script) if script else None,
        "command": [sys.executable, *sys.argv],
        "python": platform.python_version(),
        "packages": package_versions(),
        "machine": machine(),
    }
    return record
