"""Batches for label-only training: padding-free (one flat sequence) or padded, plus where the answer tokens are.

Besides the model inputs, a batch carries `target_rows`/`target_cols` (the positions whose next-token logits
predict an answer token), `target_ids` (those answer tokens) and `target_weights` (the example's class weight per
answer token; packed sequences carry `label_weights`, one per position) and `target_first` (whether the token is
the first of its answer, the one labelling scores). The trainer asks the model for logits at those positions only
(`logits_to_keep`), so the vocabulary projection runs over a handful of positions instead of every token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from erc_llm.training.data import IGNORE_INDEX


@dataclass
class LabelOnlyCollator:
    """Collate tokenised examples (input_ids, labels, weight) for `ERCSFTTrainer`."""

    pad_token_id: int
    padding_free: bool = True
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [list(f["input_ids"]) for f in features]
        labels = [list(f["labels"]) for f in features]
        weights = [float(f.get("weight", 1.0)) for f in features]
        per_token = [f.get("label_weights") for f in features]  # packed sequences: one class weight per target
        rows, cols, targets, target_weights, first = [], [], [], [], []
        offset = 0
        for i, (seq, lab) in enumerate(zip(ids, labels)):
            for pos in range(1, len(seq)):
                if lab[pos] != IGNORE_INDEX:
                    rows.append(0 if self.padding_free else i)
                    cols.append(offset + pos - 1 if self.padding_free else pos - 1)
                    targets.append(lab[pos])
                    target_weights.append(float(per_token[i][pos]) if per_token[i] is not None else weights[i])
                    first.append(lab[pos - 1] == IGNORE_INDEX)
            if self.padding_free:
                offset += len(seq)
        batch: dict[str, torch.Tensor] = {
            "target_rows": torch.tensor(rows, dtype=torch.long),
            "target_cols": torch.tensor(cols, dtype=torch.long),
            "target_ids": torch.tensor(targets, dtype=torch.long),
            "target_weights": torch.tensor(target_weights, dtype=torch.float32),
            "target_first": torch.tensor(first, dtype=torch.bool),
        }
        if self.padding_free:
            # Restarting position_ids mark the boundaries; transformers masks across them (block-diagonal causal).
            flat = [t for seq in ids for t in seq]
            positions = [p for seq in ids for p in range(len(seq))]
            pad = self._pad_len(len(flat))
            batch["input_ids"] = torch.tensor([flat + [self.pad_token_id] * pad], dtype=torch.long)
            batch["position_ids"] = torch.tensor([positions + list(range(pad))], dtype=torch.long)
            return batch
        width = max(len(seq) for seq in ids)
        width += self._pad_len(width)
        batch["input_ids"] = torch.tensor([seq + [self.pad_token_id] * (width - len(seq)) for seq in ids])
        batch["attention_mask"] = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq in ids])
        return batch

    def _pad_len(self, length: int) -> int:
        """Extra pad tokens so `length` becomes a multiple of pad_to_multiple_of."""
        m = self.pad_to_multiple_of
        return 0 if not m else (-length) % m
