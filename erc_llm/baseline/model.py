"""The encoder-fusion classifier: per-modality projections, concat or attention fusion, a feed-forward head.

Inputs per utterance: the text (token window through a fine-tuned encoder, or a cached frozen-encoder vector),
optional audio and visual feature vectors with a presence mask, and optionally a speaker id. A missing audio or
visual input is replaced by a learned "missing" vector and, in attention fusion, masked out of the attention
keys, so absent features never reach the prediction.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from erc_llm.baseline.config import BaselineModelConfig
from erc_llm.baseline.extractors import pool_hidden_states

OPTIONAL_MODALITIES = ("audio", "visual")


def _projection(input_dim: int, output_dim: int, dropout: float) -> nn.Sequential:
    """Linear projection with normalisation, non-linearity and dropout."""
    return nn.Sequential(nn.Linear(input_dim, output_dim), nn.LayerNorm(output_dim), nn.GELU(), nn.Dropout(dropout))


class FusionClassifier(nn.Module):
    """Text (+ audio, visual, speaker) fusion classifier trained with the HF Trainer (see module docstring)."""

    def __init__(
        self,
        config: BaselineModelConfig,
        num_labels: int,
        input_dims: Mapping[str, int],
        loss: nn.Module,
        num_speakers: int = 0,
        text_encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if "text" not in input_dims:
            raise ValueError("the fusion model needs a text input dimension")
        self.config = config
        self.num_labels = num_labels
        self.text_encoder = text_encoder
        self.text_pooling = config.text_pooling
        self.loss_fn = loss
        projection_dims = {"text": config.text_projection_dim, "audio": config.audio_projection_dim,
                           "visual": config.visual_projection_dim}
        self.modalities = [m for m in ("text", *OPTIONAL_MODALITIES) if m in input_dims]
        self.projections = nn.ModuleDict(
            {m: _projection(int(input_dims[m]), projection_dims[m], config.dropout) for m in self.modalities}
        )
        self.missing = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(projection_dims[m])) for m in self.modalities if m != "text"}
        )
        self.speaker_embedding = (
            nn.Embedding(num_speakers, config.speaker_embedding_dim) if num_speakers > 0 else None
        )
        token_dims = [projection_dims[m] for m in self.modalities]
        if self.speaker_embedding is not None:
            token_dims.append(config.speaker_embedding_dim)
        if config.fusion == "mha":
            if len(set(token_dims)) != 1:
                raise ValueError(f"mha fusion needs equal projection sizes, got {token_dims}")
            self.attention = nn.MultiheadAttention(token_dims[0], config.fusion_heads, dropout=config.dropout,
                                                   batch_first=True)
            self.attention_norm = nn.LayerNorm(token_dims[0])
            fused_dim = token_dims[0]
        else:
            self.attention = None
            fused_dim = sum(token_dims)
        self.head = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(fused_dim, config.head_hidden_dim),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.head_hidden_dim, num_labels),
        )

    def _text_vector(self, input_ids, attention_mask, target_mask, text_features) -> torch.Tensor:
        """Pooled text representation: from the fine-tuned encoder or the cached features."""
        if self.text_encoder is not None and input_ids is not None:
            hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return pool_hidden_states(hidden, attention_mask, target_mask, self.text_pooling)
        if text_features is None:
            raise ValueError("no text input: pass input_ids (fine-tuned encoder) or text_features (frozen cache)")
        return text_features

    def fuse(
        self,
        text_vector: torch.Tensor,
        optional: Mapping[str, tuple[torch.Tensor | None, torch.Tensor | None]],
        speaker_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        """The fused representation [B, D] from the pooled text vector and optional inputs with masks."""
        batch = text_vector.shape[0]
        tokens = [self.projections["text"](text_vector)]
        present = [torch.ones(batch, dtype=torch.bool, device=text_vector.device)]
        for modality in self.modalities[1:]:
            features, mask = optional.get(modality, (None, None))
            if features is None:
                features = torch.zeros(batch, self.projections[modality][0].in_features, device=text_vector.device)
                mask = torch.zeros(batch, dtype=torch.bool, device=text_vector.device)
            mask = torch.ones(batch, dtype=torch.bool, device=features.device) if mask is None else mask.bool()
            projected = self.projections[modality](features.to(text_vector.dtype))
            filler = self.missing[modality].to(projected.dtype).expand_as(projected)
            tokens.append(torch.where(mask[:, None], projected, filler))
            present.append(mask)
        if self.speaker_embedding is not None:
            if speaker_ids is None:
                speaker_ids = torch.zeros(batch, dtype=torch.long, device=text_vector.device)
            tokens.append(self.speaker_embedding(speaker_ids))
            present.append(torch.ones(batch, dtype=torch.bool, device=text_vector.device))
        if self.attention is None:
            return torch.cat(tokens, dim=-1)
        sequence = torch.stack(tokens, dim=1)
        present_mask = torch.stack(present, dim=1)
        attended, _ = self.attention(sequence, sequence, sequence, key_padding_mask=~present_mask)
        sequence = self.attention_norm(sequence + attended)
        weights = present_mask.unsqueeze(-1).to(sequence.dtype)
        return (sequence * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def forward(
        self,
        labels: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        target_mask: torch.Tensor | None = None,
        text_features: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        audio_mask: torch.Tensor | None = None,
        visual_features: torch.Tensor | None = None,
        visual_mask: torch.Tensor | None = None,
        speaker_ids: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        text_vector = self._text_vector(input_ids, attention_mask, target_mask, text_features)
        fused = self.fuse(
            text_vector,
            {"audio": (audio_features, audio_mask), "visual": (visual_features, visual_mask)},
            speaker_ids,
        )
        logits = self.head(fused)
        loss = self.loss_fn(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
