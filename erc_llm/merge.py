"""Merge a trained LoRA adapter into a freshly loaded full-precision base: a folder vLLM serves without PEFT.

`erc-llm merge --adapter runs/<run> [--out DIR] [--dtype bfloat16]` (and `recipes/sft.py` with `merge_adapter:
true`, after the test split was labelled with the adapter) load the base model named by the run's
`erc_config.yaml` (else the adapter's `adapter_config.json`) unquantised on the CPU, apply the adapter, merge it,
and save safetensors + tokenizer + chat template with `use_cache: true`. A QLoRA run's adapter is merged into the
bf16 base, never into de-/re-quantised 4-bit layers. The folder is written atomically; `merge_info.json` records
the base, adapter digest and dtype.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

MERGE_INFO = "merge_info.json"
DTYPES = ("bfloat16", "float16", "float32")


class MergeError(ValueError):
    """The adapter folder or its base cannot be merged (the message says why)."""


def adapter_digest(adapter: str | Path) -> str:
    """Short sha256 of an adapter's config and weights."""
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        path = Path(adapter) / name
        if path.exists():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def adapter_base(adapter: str | Path) -> tuple[str, dict[str, Any]]:
    """(base model id or path, from_pretrained kwargs) of an adapter folder: the SFT run's erc_config.yaml
    (model_name_or_path, revision, trust_remote_code) first, else adapter_config.json's base_model_name_or_path."""
    folder = Path(adapter)
    config = folder / "adapter_config.json"
    if not config.is_file():
        raise MergeError(f"{folder}: not a LoRA adapter folder (no adapter_config.json)")
    saved = folder / "erc_config.yaml"
    if saved.is_file():
        run = yaml.safe_load(saved.read_text()) or {}
        if run.get("model_name_or_path"):
            kwargs = {"revision": run.get("model_revision") or "main",
                      "trust_remote_code": bool(run.get("trust_remote_code", False))}
            return str(run["model_name_or_path"]), kwargs
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise MergeError(f"{config}: no base_model_name_or_path; pass --base")
    return str(base), {}


def merge_adapter(adapter: str | Path, out: str | Path | None = None, base: str | None = None,
                  dtype: str = "bfloat16") -> Path:
    """Merge `adapter` into an unquantised `dtype` copy of its base on the CPU; save to `out` (default
    <adapter>/merged). Returns the folder."""
    if dtype not in DTYPES:
        raise MergeError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from erc_llm.io import replace_dir
    from erc_llm.offline_models import resolve_model

    adapter = Path(adapter)
    base_name, kwargs = adapter_base(adapter)
    base_name = base or base_name
    base_path = resolve_model(base_name)
    target = Path(out) if out else adapter / "merged"
    target.parent.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, dtype), device_map="cpu",
                                                 low_cpu_mem_usage=True, **kwargs)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.config.use_cache = True  # training switched the KV cache off; a served model needs it
    if getattr(merged.config, "quantization_config", None) is not None:
        raise MergeError(f"{base_path} loaded quantised; the merged model must be a full-precision base")
    tokenizer_src = adapter if (adapter / "tokenizer_config.json").is_file() else base_path
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(str(tokenizer_src), **kwargs).save_pretrained(tmp)
        try:
            GenerationConfig.from_pretrained(base_path).save_pretrained(tmp)
        except OSError:
            pass  # the base has no generation_config.json
        info = {"adapter": str(adapter.resolve()), "adapter_digest": adapter_digest(adapter), "base": base_name,
                "base_path": str(base_path), "dtype": dtype}
        (tmp / MERGE_INFO).write_text(json.dumps(info, indent=2) + "\n")
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add `erc-llm merge`."""
    p = subparsers.add_parser("merge", help="merge a trained LoRA adapter into a servable full-precision model folder")
    p.add_argument("--adapter", required=True, metavar="RUN_DIR", help="adapter folder written by recipes/sft.py")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: RUN_DIR/merged)")
    p.add_argument("--base", default=None, help="base model (default: the run's model_name_or_path)")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES, help="dtype of the merged weights")
    p.set_defaults(func=cmd_merge)


def cmd_merge(args: argparse.Namespace) -> int:
    """Merge and print the folder (a bad adapter folder or base is one error line, exit 2)."""
    import sys

    from erc_llm.offline_models import ModelResolutionError

    try:
        print(merge_adapter(args.adapter, args.out, base=args.base, dtype=args.dtype))
    except (MergeError, ModelResolutionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
