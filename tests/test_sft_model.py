"""Real-model checks (SmolLM2-135M, CPU): label scoring equals a naive computation, prefix caching and full-sequence
scoring agree with plain forward passes, padded and padding-free batches give the same label-only loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from erc_llm.data import MELD_LABELS, SpeakerRegistry, load_split
from erc_llm.offline_models import resolve_model
from erc_llm.prompting import PromptBuilder, PromptConfig, label_tokens
from erc_llm.prompting.templates import chat_prompt_ids
from erc_llm.training.collator import LabelOnlyCollator
from erc_llm.training.data import build_train_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lm():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def examples(data_dir):
    train = load_split("meld", "train", data_dir)
    builder = PromptBuilder(PromptConfig(past_window=2, max_line_chars=80), MELD_LABELS,
                            SpeakerRegistry.build([train.dialogues]))
    return builder.training_examples(train.dialogues[:2])[:4]


def _naive_sequence_logprob(model, prompt: list[int], seq: tuple[int, ...]) -> float:
    """log p(seq | prompt) from one plain forward pass over prompt + seq."""
    ids = torch.tensor([prompt + list(seq)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids, logits_to_keep=len(seq) + 1).logits[0].float(), -1)
    return sum(float(logp[i, t]) for i, t in enumerate(seq))


def test_label_scorer_matches_naive_computation(lm, examples) -> None:
    from erc_llm.labelling.scorers import HFLabelScorer

    model, tokenizer = lm
    labels = list(MELD_LABELS.labels)
    prompts = [e.messages for e in examples]
    answer = label_tokens(tokenizer, labels)
    cached = HFLabelScorer(model, tokenizer, labels, batch_size=4).score(prompts)
    plain = HFLabelScorer(model, tokenizer, labels, batch_size=4, prefix_cache=False).score(prompts)
    full = HFLabelScorer(model, tokenizer, labels, batch_size=4, full_sequence=True).score(prompts)
    for i, messages in enumerate(prompts):
        ids = chat_prompt_ids(tokenizer, messages)
        with torch.no_grad():
            next_logp = torch.log_softmax(model(input_ids=torch.tensor([ids]), logits_to_keep=1).logits[0, -1], -1)
        first = {lab: float(next_logp[answer.ids[lab][0]]) for lab in labels}
        z = math.log(sum(math.exp(v) for v in first.values()))
        for lab in labels:
            assert cached[i][lab] == pytest.approx(math.exp(first[lab] - z), abs=2e-4)
            assert plain[i][lab] == pytest.approx(cached[i][lab], abs=2e-4)
        seq = {lab: first[lab] if len(answer.ids[lab]) == 1 else _naive_sequence_logprob(model, ids, answer.ids[lab])
               for lab in labels}
        zs = math.log(sum(math.exp(v) for v in seq.values()))
        for lab in labels:
            assert full[i][lab] == pytest.approx(math.exp(seq[lab] - zs), abs=2e-4)
        assert sum(cached[i].values()) == pytest.approx(1.0, abs=1e-5)


def test_padding_free_and_padded_batches_give_the_same_label_loss(lm, examples) -> None:
    model, tokenizer = lm
    answer = label_tokens(tokenizer, MELD_LABELS.labels)
    dataset, stats = build_train_dataset(examples, tokenizer, answer, {}, max_length=None)
    assert stats.truncated == 0
    features = [dataset[i] for i in range(len(dataset))]
    for f in features:  # labels only on the answer: label word + end-of-turn token
        n = sum(1 for t in f["labels"] if t != -100)
        assert f["labels"][-n:] == f["input_ids"][-n:] and n == len(answer.ids[tokenizer.decode(f["input_ids"][-n:-1])]) + 1
    losses = []
    for padding_free in (True, False):
        batch = LabelOnlyCollator(pad_token_id=tokenizer.pad_token_id, padding_free=padding_free)(features)
        rows, cols, targets = batch.pop("target_rows"), batch.pop("target_cols"), batch.pop("target_ids")
        batch.pop("target_weights"), batch.pop("target_first")
        keep, index = torch.unique(cols, return_inverse=True)
        with torch.no_grad():
            # use_cache=False as in training: transformers derives the block-diagonal mask from position_ids only
            # when there is neither an attention mask nor a KV cache
            logits = model(**batch, logits_to_keep=keep, use_cache=False).logits[rows, index].float()
        losses.append(F.cross_entropy(logits, targets))
    assert float(losses[0]) == pytest.approx(float(losses[1]), rel=1e-3)
