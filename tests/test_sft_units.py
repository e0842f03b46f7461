"""Unit tests of the SFT library: subsampling, class weights, label-only tokenisation, collator, recipe configs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from erc_llm.training.collator import LabelOnlyCollator
from erc_llm.training.config import ERCSFTConfig, SFTConfigError, load_recipe
from erc_llm.training.data import IGNORE_INDEX, class_quotas, class_weights, subsample_examples

REPO = Path(__file__).resolve().parents[1]
SFT_RECIPES = sorted(REPO.glob("recipes/*/sft/*.yaml"))


def test_class_quotas_strategies() -> None:
    counts = {"neutral": 4700, "joy": 1700, "surprise": 1200, "anger": 1100, "sadness": 680, "disgust": 270, "fear": 268}
    for strategy in ("stratified", "sqrt", "balanced"):
        quotas = class_quotas(counts, 2000, strategy)
        assert sum(quotas.values()) == 2000
        assert all(quotas[k] <= counts[k] for k in counts)
    strat, sqrt, bal = (class_quotas(counts, 2000, s) for s in ("stratified", "sqrt", "balanced"))
    assert strat["neutral"] > sqrt["neutral"] > bal["neutral"]
    assert strat["fear"] < sqrt["fear"] < bal["fear"]
    uncapped = [q for k, q in bal.items() if q < counts[k]]
    assert max(uncapped) - min(uncapped) <= 1 and bal["fear"] == 268  # small classes taken whole
    # more slots than a small class holds: the class is taken whole, the rest goes elsewhere
    assert class_quotas({"a": 3, "b": 100}, 60, "balanced") == {"a": 3, "b": 57}


def test_class_weights_inverse_normalised_to_mean_one() -> None:
    labels = ["n"] * 80 + ["j"] * 15 + ["f"] * 5
    w = class_weights(labels, "inverse", max_weight=100)
    assert w["n"] == pytest.approx(100 / (3 * 80))
    assert sum(w[y] for y in labels) / len(labels) == pytest.approx(1.0)
    s = class_weights(labels, "sqrt_inverse", max_weight=100)
    assert sum(s[y] for y in labels) / len(labels) == pytest.approx(1.0)
    assert w["f"] > s["f"] > 1 > s["n"] > w["n"]
    assert class_weights(labels, "inverse", max_weight=2.0)["f"] == 2.0
    assert set(class_weights(labels, "none").values()) == {1.0}


class _Ex:
    def __init__(self, i: int, label: str) -> None:
        self.key, self.label = ("d", i), label


def test_subsample_is_seeded_and_follows_strategy() -> None:
    examples = [_Ex(i, "n" if i % 10 else "r") for i in range(1000)]
    a = subsample_examples(examples, 100, "balanced", seed=3)
    assert [e.key for e in a] == [e.key for e in subsample_examples(examples, 100, "balanced", seed=3)]
    assert Counter(e.label for e in a) == {"n": 50, "r": 50}
    assert Counter(e.label for e in subsample_examples(examples, 100, "stratified", 0)) == {"n": 90, "r": 10}
    assert len(subsample_examples(examples, None, "random", 0)) == 1000


def test_collator_targets_point_at_answer_tokens() -> None:
    features = [
        {"input_ids": [5, 6, 7, 8, 9], "labels": [IGNORE_INDEX] * 3 + [8, 9], "weight": 2.0},
        {"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, IGNORE_INDEX, 3], "weight": 0.5},
    ]
    for padding_free in (True, False):
        batch = LabelOnlyCollator(pad_token_id=0, padding_free=padding_free)(features)
        ids = batch["input_ids"]
        # the logits at (row, col) predict the token at (row, col + 1)
        assert ids[batch["target_rows"], batch["target_cols"] + 1].tolist() == batch["target_ids"].tolist() == [8, 9, 3]
        assert batch["target_weights"].tolist() == [2.0, 2.0, 0.5]
        assert batch["target_first"].tolist() == [True, False, True]
        if padding_free:
            assert ids.shape == (1, 8) and batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]
            assert "attention_mask" not in batch
        else:
            assert ids.shape == (2, 5) and batch["attention_mask"].tolist()[1] == [1, 1, 1, 0, 0]


def _parse_here(path: Path):
    """Parse a recipe on this machine: a GPU recipe's bf16 is switched off when no GPU is present (transformers
    refuses bf16 without a GPU unless use_cpu), everything else is parsed and validated as written."""
    raw = yaml.safe_load(path.read_text())
    gpu_only = raw.get("bf16") and not raw.get("use_cpu") and not torch.cuda.is_available()
    return load_recipe(path, ["--bf16", "false"] if gpu_only else []), raw


def test_every_sft_recipe_parses_with_unknown_keys_rejected(tmp_path: Path) -> None:
    assert len(SFT_RECIPES) >= 8, SFT_RECIPES
    for path in SFT_RECIPES:
        (data_args, training_args, model_args), _ = _parse_here(path)
        assert model_args.model_name_or_path and model_args.use_peft, path
        assert isinstance(training_args, ERCSFTConfig)
        assert training_args.metric_for_best_model.endswith("weighted_f1"), path
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "recipes/smollm2-135m/sft/smoke.yaml").read_text() + "\nnot_a_field: 1\n")
    with pytest.raises(ValueError, match="not_a_field"):
        load_recipe(bad)


def test_gpu_recipes_ask_for_qlora_bf16() -> None:
    paths = sorted(REPO.glob("recipes/*-3b/sft/qlora.yaml"))
    assert len(paths) == 2
    for path in paths:
        (_, training_args, model_args), raw = _parse_here(path)
        assert model_args.load_in_4bit and model_args.bnb_4bit_quant_type == "nf4" and raw["bf16"] is True
        assert "/" in model_args.model_name_or_path and not training_args.use_cpu  # a hub id, GPU


def test_config_validation_names_the_field() -> None:
    smoke = REPO / "recipes/smollm2-135m/sft/smoke.yaml"
    with pytest.raises(SFTConfigError, match="class_weighting"):
        load_recipe(smoke, ["--class_weighting", "bogus"])
    with pytest.raises(SFTConfigError, match="padding_free"):
        load_recipe(smoke, ["--padding_free", "true"])
    with pytest.raises(SFTConfigError, match="train_subsample_strategy"):
        load_recipe(smoke, ["--train_subsample_strategy", "nope"])
    with pytest.raises(SFTConfigError, match="load_in_4bit"):
        load_recipe(smoke, ["--load_in_4bit", "true", "--use_peft", "false"])  # QLoRA without LoRA
    data_args, training_args, _ = load_recipe(smoke, ["--learning_rate", "3e-3", "--past_window", "4"])
    assert training_args.learning_rate == 3e-3 and data_args.past_window == 4
    assert training_args.dataset_kwargs["skip_prepare_dataset"] is True


def test_label_bias_fitted_on_dev_improves_a_skewed_scorer() -> None:
    from erc_llm.evaluation.rundir import PredictionRecord
    from erc_llm.labelling.bias import fit_label_bias

    labels = ["neutral", "joy", "fear"]
    records = []
    for i in range(60):  # the model always prefers neutral a little, though joy/fear are the gold labels here
        gold = labels[i % 3]
        scores = {"neutral": 0.5, "joy": 0.3, "fear": 0.2}
        if gold != "neutral":
            scores = {"neutral": 0.45, gold: 0.4, ("fear" if gold == "joy" else "joy"): 0.15}
        records.append(PredictionRecord("d", i, "A", "t", "neutral", gold, None, scores))
    bias, before, after = fit_label_bias(records, labels)
    assert bias["neutral"] == 0.0 and after > before and after == pytest.approx(1.0)


def test_label_set_loss_is_a_softmax_over_the_labels_first_tokens_at_first_answer_tokens() -> None:
    import torch.nn.functional as F

    from erc_llm.training.trainer import label_token_loss

    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    targets = torch.tensor([7, 8, 3, 9])  # answers "7 8" (first, continuation) and "3", then a continuation 9
    first = torch.tensor([True, False, True, False])
    label_ids = torch.tensor([3, 7, 11])
    vocab = label_token_loss(logits, targets, first, None)
    assert torch.allclose(vocab, F.cross_entropy(logits, targets, reduction="none"))
    restricted = label_token_loss(logits, targets, first, label_ids)
    expected_0 = -torch.log_softmax(logits[0, label_ids], dim=0)[1]  # token 7 is the 2nd label's first token
    expected_2 = -torch.log_softmax(logits[2, label_ids], dim=0)[0]
    assert torch.allclose(restricted[[0, 2]], torch.stack([expected_0, expected_2]))
    assert torch.allclose(restricted[[1, 3]], vocab[[1, 3]])  # continuation tokens keep the vocabulary loss
    assert bool((restricted[[0, 2]] < vocab[[0, 2]]).all())  # a softmax over fewer tokens: a smaller loss
    with pytest.raises(ValueError, match="not one of the labels' first tokens"):
        label_token_loss(logits, torch.tensor([5, 8, 3, 9]), first, label_ids)


def test_label_loss_must_be_known() -> None:
    with pytest.raises(SFTConfigError, match="label_loss"):
        ERCSFTConfig(output_dir="/tmp/x", label_loss="labels")


def test_inline_label_settings_of_a_per_utterance_run_are_refused_at_parse_time() -> None:
    """A per-utterance run on top of a packed recipe with inline label noise is an error before any model loads
    (it used to surface only after loading the model; the training benchmark's per-utterance arm hit it)."""
    with pytest.raises(SFTConfigError, match="packed_label_noise.*layout: per_utterance"):
        load_recipe(REPO / "recipes/qwen2.5-coder-0.5b/sft/meld_packed.yaml",
                    ["--layout", "per_utterance", "--template", "erc_instruct.j2"])


def test_self_predicted_inline_labels_are_refused_where_they_cannot_replace_gold() -> None:
    recipe = REPO / "recipes/qwen2.5-coder-0.5b/sft/meld_packed.yaml"  # 20% inline label noise
    with pytest.raises(SFTConfigError, match="packed_inline_self_predictions.*packed_label_noise: 0"):
        load_recipe(recipe, ["--packed_inline_self_predictions", "1"])
    with pytest.raises(SFTConfigError, match="batching: padding_free"):
        load_recipe(recipe, ["--packed_inline_self_predictions", "1", "--packed_label_noise", "0",
                             "--batching", "length_grouped"])
    with pytest.raises(SFTConfigError, match="in \\[0, 1\\]"):
        load_recipe(recipe, ["--packed_inline_self_predictions", "1.5", "--packed_label_noise", "0"])
    _, training_args, _ = load_recipe(recipe, ["--packed_inline_self_predictions", "0.5", "--packed_label_noise", "0"])
    assert training_args.packed_inline_self_predictions == 0.5


def test_every_training_benchmark_arm_parses_against_todays_recipe(tmp_path: Path) -> None:
    """The arms of evaluation/bench_sft_packed.py are recipe overrides: a recipe change must not break them."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_sft_packed", REPO / "evaluation" / "bench_sft_packed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for layout, overrides in bench.LAYOUTS.items():
        per_step = []
        for processes in (1, 2):  # `--processes 2`: the same examples per optimizer step over two processes
            arm = bench.per_process(overrides, processes)
            data_args, training_args, _ = load_recipe(REPO / "recipes/qwen2.5-coder-0.5b/sft/meld_packed.yaml", [
                "--output_dir", str(tmp_path / layout), "--train_subsample", "400", *bench.COMMON, *arm])
            assert layout.startswith(data_args.layout)
            per_step.append(processes * training_args.per_device_train_batch_size
                            * training_args.gradient_accumulation_steps)
        assert per_step[0] == per_step[1]


def test_length_grouped_steps_need_a_constant_loss_normaliser() -> None:
    """Grouping short dialogues into the same step with a per-step mean would give their lines several times the
    weight of a line among long dialogues (MELD 1-3-line dialogues: 5.4x the average line, 1.5x in a random order)."""
    recipe = REPO / "recipes/qwen2.5-coder-0.5b/sft/meld_packed.yaml"
    _, default, _ = load_recipe(recipe, [])
    assert default.loss_normalizer == "auto" and default.step_loss_normalizer == "step_tokens"
    _, grouped, _ = load_recipe(recipe, ["--group_steps_by_length", "16"])
    assert grouped.loss_normalizer == "auto" and grouped.step_loss_normalizer == "mean_step_tokens"
    with pytest.raises(SFTConfigError, match="group_steps_by_length needs loss_normalizer: mean_step_tokens"):
        load_recipe(recipe, ["--group_steps_by_length", "16", "--loss_normalizer", "step_tokens"])
    with pytest.raises(SFTConfigError, match="batching: length_grouped"):
        load_recipe(recipe, ["--group_steps_by_length", "16", "--batching", "length_grouped"])
    with pytest.raises(SFTConfigError, match="loss_normalizer must be one of"):
        load_recipe(recipe, ["--loss_normalizer", "tokens"])
    with pytest.raises(SFTConfigError, match="group_steps_by_length must be >= 0"):
        load_recipe(recipe, ["--group_steps_by_length", "-1"])


def test_mean_step_answer_tokens_is_the_training_sets_mean_per_optimizer_step() -> None:
    from types import SimpleNamespace

    from datasets import Dataset

    from erc_llm.training.data import IGNORE_INDEX
    from erc_llm.training.trainer import mean_step_answer_tokens

    x = IGNORE_INDEX
    dataset = Dataset.from_dict({"labels": [[x, 5, x, 6, 7], [x, x, 4], [x, 1, 2, 3, x, 9]]})  # 3, 1, 4 answer tokens
    args = SimpleNamespace(per_device_train_batch_size=1, gradient_accumulation_steps=2, world_size=2)
    assert mean_step_answer_tokens(dataset, args) == pytest.approx(8 / 3 * 4)


def test_the_packed_prompts_issues_benchmark_files_have_the_fields_it_names() -> None:
    """evaluation/bench_sft_packed.json: {"per_utterance": {"utterances", "seconds", ...}, "packed": {...}};
    evaluation/bench_labelling_meld.json: an entry whose key contains `packed`, with the other entries' fields."""
    training = json.loads((REPO / "evaluation" / "bench_sft_packed.json").read_text())
    for arm in ("per_utterance", "packed"):
        assert training[arm]["utterances"] > 0 and training[arm]["seconds"] > 0
    assert training["speedup"] == pytest.approx(
        training["packed"]["utterances_per_second"] / training["per_utterance"]["utterances_per_second"], abs=0.01)
    labelling = json.loads((REPO / "evaluation" / "bench_labelling_meld.json").read_text())
    packed = [key for key in labelling if "packed" in key]
    assert packed
    fields = {k for key, entry in labelling.items() if "packed" not in key and isinstance(entry, dict) for k in entry}
    assert fields and all(fields <= set(labelling[key]) for key in packed if isinstance(labelling[key], dict))
