"""The label answer format with the real SmolLM2 tokenizer: MELD and EmoryNLP labels must not collide, and
one-pass scoring (first-token logits) needs their first tokens to differ."""

from __future__ import annotations

import pytest

from erc_llm.data import EMORYNLP_LABELS, MELD_LABELS
from erc_llm.prompting.answer import label_tokens

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from erc_llm.offline_models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct"))


@pytest.mark.parametrize("label_set", [MELD_LABELS, EMORYNLP_LABELS], ids=lambda s: s.name)
def test_labels_are_collision_free_and_first_tokens_unique(tokenizer, label_set):
    answer = label_tokens(tokenizer, label_set.labels)  # raises on any collision
    assert len(answer.ids) == 7 and len(set(answer.ids.values())) == 7
    assert answer.end_ids and answer.end_ids[0] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    pieces = {label: [tokenizer.decode([i]) for i in ids] for label, ids in answer.ids.items()}
    print(f"\n{label_set.name}: first tokens unique = {answer.first_token_unique}; {pieces}")
    # Measured with SmolLM2's tokenizer: every label starts with its own token in both corpora, so the
    # first-token distribution after the generation prompt scores all labels in one forward pass.
    assert answer.first_token_unique
