"""Classification losses selectable by config: cross-entropy, class-weighted CE, Dice and focal.

All take logits [B, C] and integer labels [B]; labels equal to `IGNORE_INDEX` (-100) are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


def inverse_frequency_weights(label_ids: Sequence[int], num_classes: int) -> torch.Tensor:
    """Class weights N / (C * n_c) from training labels (a class never seen gets the largest seen weight)."""
    labels = np.asarray([label for label in label_ids if label != IGNORE_INDEX], dtype=np.int64)
    if labels.size == 0:
        raise ValueError("no labelled training utterances to compute class weights from")
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes, dtype=np.float64)
    seen = counts > 0
    weights[seen] = labels.size / (num_classes * counts[seen])
    weights[~seen] = weights[seen].max()
    return torch.tensor(weights, dtype=torch.float32)


def _valid(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose label is not IGNORE_INDEX."""
    keep = labels != IGNORE_INDEX
    return logits[keep], labels[keep]


class CrossEntropyLoss(nn.Module):
    """Cross-entropy, optionally class-weighted and label-smoothed (torch's definition, mean over the batch)."""

    def __init__(self, class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, weight=self.class_weights, ignore_index=IGNORE_INDEX,
                               label_smoothing=self.label_smoothing)


class FocalLoss(nn.Module):
    """Focal loss, mean over the batch of -(1 - p_t)^gamma * log p_t (gamma = 0 gives cross-entropy)."""

    def __init__(self, gamma: float = 2.0, class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits, labels = _valid(logits, labels)
        if labels.numel() == 0:
            return logits.sum() * 0.0
        log_p = F.log_softmax(logits.float(), dim=-1).gather(1, labels[:, None]).squeeze(1)
        loss = -((1.0 - log_p.exp()).clamp(min=0.0) ** self.gamma) * log_p
        if self.class_weights is not None:
            loss = loss * self.class_weights[labels]
        return loss.mean()


class DiceLoss(nn.Module):
    """Soft multi-class Dice loss: 1 - mean over classes of (2 sum p*y + s) / (sum p + sum y + s)."""

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits, labels = _valid(logits, labels)
        if labels.numel() == 0:
            return logits.sum() * 0.0
        probabilities = F.softmax(logits.float(), dim=-1)
        one_hot = F.one_hot(labels, num_classes=logits.shape[-1]).to(probabilities.dtype)
        intersection = (probabilities * one_hot).sum(dim=0)
        denominator = probabilities.sum(dim=0) + one_hot.sum(dim=0)
        dice = (2.0 * intersection + self.smooth) / (denominator + self.smooth)
        return 1.0 - dice.mean()


def build_loss(
    name: str,
    num_classes: int,
    train_label_ids: Sequence[int] | None = None,
    focal_gamma: float = 2.0,
    dice_smooth: float = 1.0,
    label_smoothing: float = 0.0,
) -> nn.Module:
    """The loss module a config names (`ce`, `weighted_ce`, `dice`, `focal`)."""
    if name == "ce":
        return CrossEntropyLoss(label_smoothing=label_smoothing)
    if name == "weighted_ce":
        if train_label_ids is None:
            raise ValueError("weighted_ce needs the training labels")
        return CrossEntropyLoss(inverse_frequency_weights(train_label_ids, num_classes), label_smoothing)
    if name == "dice":
        return DiceLoss(dice_smooth)
    if name == "focal":
        return FocalLoss(focal_gamma)
    raise ValueError(f"unknown loss {name!r}")
