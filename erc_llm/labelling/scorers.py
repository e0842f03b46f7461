"""Label scorers over a transformers model (the `hf` labelling backend and the SFT dev/test evaluation).

`HFLabelScorer` scores independent prompts in batches; `HFPackedScorer` scores the steps of packed dialogue chats
and keeps one KV cache per dialogue. Both give one probability per label (no free generation). A dev-fitted label
bias is applied by wrapping either in `erc_llm.labelling.bias.BiasedScorer`.

HFLabelScorer:

A batch of prompts (chat-templated, sorted by length) goes through the model once: the token prefix all prompts
share (system message, label list) is encoded once and its KV cache repeated over the batch, the rest is
left-padded after it (padding masked out). The logits at the answer position, restricted to the labels' first tokens, give a softmax over the labels. When two labels
share their first token, each label's whole token sequence is scored instead, continuing from the prompt's KV
cache (one extra pass per label with more than one token), and the label log-probabilities are normalised.
`HFLabelScorer` is a `erc_llm.labelling.loop.LabelScorer`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence

import torch

from erc_llm.prompting.answer import LabelTokens, label_tokens
from erc_llm.prompting.templates import chat_prompt_ids


@contextlib.contextmanager
def inference(model, autocast_dtype: torch.dtype | None = None):
    """Eval mode and inference_mode (plus autocast when given) for scoring, the model's state restored after.

    Frozen (requires_grad=False) bf16 weights take a 4-6x slower CPU matmul path in this torch build (measured on
    SmolLM2: 13.5 s vs 2.3 s per forward); they are flagged trainable meanwhile (no graph is recorded under
    inference_mode) and restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    frozen = [p for p in model.parameters() if not p.requires_grad] if device.type == "cpu" else []
    for param in frozen:
        param.requires_grad_(True)
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    try:
        with torch.inference_mode(), autocast:
            yield
    finally:
        for param in frozen:
            param.requires_grad_(False)
        if was_training:
            model.train()


class HFLabelScorer:
    """Score prompts over a label set with a causal LM (plain or PEFT-wrapped)."""

    def __init__(
        self, model, tokenizer, labels: Sequence[str], batch_size: int = 32, max_length: int | None = None,
        autocast_dtype: torch.dtype | None = None, full_sequence: bool | None = None, prefix_cache: bool = True,
        min_prefix: int = 16,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.answer: LabelTokens = label_tokens(tokenizer, self.labels)
        self.batch_size = batch_size
        self.max_length = max_length
        self.autocast_dtype = autocast_dtype
        self.full_sequence = (not self.answer.first_token_unique) if full_sequence is None else full_sequence
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad)
        self.prefix_cache = prefix_cache
        self.min_prefix = min_prefix
        self.prompt_tokens = 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _encode(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt ids; over-long prompts lose their oldest tokens (as in training)."""
        ids = chat_prompt_ids(self.tokenizer, messages)
        if self.max_length is not None and len(ids) > self.max_length:
            ids = ids[len(ids) - self.max_length:]
        return ids

    def score(self, prompts: Sequence[list[dict[str, str]]]) -> list[dict[str, float]]:
        """Probability of each label for each prompt (in input order)."""
        encoded = [self._encode(m) for m in prompts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        results: list[dict[str, float] | None] = [None] * len(encoded)
        with inference(self.model, self.autocast_dtype):
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                probs = self._score_batch([encoded[i] for i in chunk])
                for i, row in zip(chunk, probs.tolist()):
                    results[i] = dict(zip(self.labels, row))
        return results  # type: ignore[return-value]

    def _shared_prefix(self, batch: list[list[int]]) -> int:
        """Length of the token prefix shared by every prompt (kept >= 1 token short of the shortest prompt)."""
        if not self.prefix_cache or len(batch) < 2:
            return 0
        shortest = min(len(ids) for ids in batch)
        n = 0
        while n < shortest - 1 and all(ids[n] == batch[0][n] for ids in batch):
            n += 1
        return n if n >= self.min_prefix else 0

    def _score_batch(self, batch: list[list[int]]) -> torch.Tensor:
        """[batch, n_labels] label probabilities; the shared prefix is encoded once and its KV cache reused."""
        n_prefix = self._shared_prefix(batch)
        cache = None
        if n_prefix:
            head = torch.tensor([batch[0][:n_prefix]], device=self.device)
            cache = self.model(input_ids=head, use_cache=True, logits_to_keep=1).past_key_values
            cache.batch_repeat_interleave(len(batch))
        rests = [ids[n_prefix:] for ids in batch]
        width = max(len(ids) for ids in rests)
        self.prompt_tokens += n_prefix + sum(len(ids) for ids in rests)
        # Layout: [shared prefix (cached)] [left padding] [rest of the prompt]; padding is masked out.
        input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in rests], device=self.device)
        rest_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rests], device=self.device)
        mask = torch.cat([torch.ones(len(batch), n_prefix, dtype=rest_mask.dtype, device=self.device), rest_mask], -1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, n_prefix:]
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=self.full_sequence, logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        if not self.full_sequence:
            scores = first[:, self.answer.first_ids]
        else:
            scores = self._sequence_scores(first, out.past_key_values, mask, positions[:, -1])
        return torch.softmax(scores, dim=-1)

    def _sequence_scores(self, first: torch.Tensor, cache, mask: torch.Tensor, last_pos: torch.Tensor) -> torch.Tensor:
        """Sum of log-probabilities of each label's tokens, continuing from the prompts' KV cache."""
        scores = torch.stack([first[:, self.answer.ids[label][0]] for label in self.labels], dim=-1)
        for j, label in enumerate(self.labels):
            seq = self.answer.ids[label]
            if len(seq) < 2:
                continue
            steps = torch.tensor([list(seq[:-1])] * first.shape[0], device=self.device)
            ext_mask = torch.cat([mask, torch.ones_like(steps)], dim=-1)
            ext_pos = last_pos[:, None] + torch.arange(1, steps.shape[1] + 1, device=self.device)[None]
            cont = self.model(input_ids=steps, attention_mask=ext_mask, position_ids=ext_pos,
                              past_key_values=copy.deepcopy(cache), use_cache=True)
            logp = torch.log_softmax(cont.logits.float(), dim=-1)
            targets = torch.tensor(seq[1:], device=self.device)
            scores[:, j] += logp[:, torch.arange(len(seq) - 1), targets].sum(-1)
        return scores


Messages = list[dict[str, str]]


class HFPackedScorer:
    """Label scoring with a transformers model that keeps one KV cache per dialogue ("stream").

    A step's prompt must extend the stream's previous prompt (the packed layout guarantees it); only the new
    tokens are run. Per-label probabilities as in `erc_llm.labelling.scorers.HFLabelScorer`: softmax over the
    labels' first-token log-probabilities, or over whole-label log-probabilities when first tokens collide.
    """

    def __init__(self, model, tokenizer, labels: Sequence[str], autocast_dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.answer = label_tokens(tokenizer, self.labels)
        self.autocast_dtype = autocast_dtype
        self.streams: dict[str, tuple[list[int], object]] = {}
        self.prompt_tokens = 0  # tokens actually run through the model
        self.cached_tokens = 0  # prompt tokens served from a kept cache

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def score(self, prompts: Sequence[Messages]) -> list[dict[str, float]]:
        """Stateless scoring (every prompt from scratch)."""
        return [self._step(None, m) for m in prompts]

    def score_streams(self, items: Sequence[tuple[str, Messages]]) -> list[dict[str, float]]:
        """Score each (stream id, prompt), reusing and extending the stream's KV cache."""
        return [self._step(stream, messages) for stream, messages in items]

    def end_streams(self, streams: Sequence[str]) -> None:
        """Free finished dialogues' caches."""
        for stream in streams:
            self.streams.pop(stream, None)

    def _step(self, stream: str | None, messages: Messages) -> dict[str, float]:
        from transformers import DynamicCache

        ids = chat_prompt_ids(self.tokenizer, messages)
        previous, cache = self.streams.get(stream, ([], None)) if stream is not None else ([], None)
        if cache is None or len(previous) >= len(ids) or ids[: len(previous)] != previous:
            previous, cache = [], DynamicCache()
        new = ids[len(previous):]
        self.prompt_tokens += len(new)
        self.cached_tokens += len(previous)
        with inference(self.model, self.autocast_dtype):
            out = self.model(input_ids=torch.tensor([new], device=self.device), past_key_values=cache, use_cache=True,
                             logits_to_keep=1)
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            if self.answer.first_token_unique:
                scores = first[self.answer.first_ids]
            else:
                scores = self._sequence_scores(first, out.past_key_values, len(ids))
        if stream is not None:
            self.streams[stream] = (ids, out.past_key_values)
        probs = torch.softmax(scores, dim=-1).tolist()
        return dict(zip(self.labels, probs))

    def _sequence_scores(self, first: torch.Tensor, cache, length: int) -> torch.Tensor:
        """Whole-label log-probabilities continuing from a copy of the prompt's cache."""
        scores = torch.stack([first[self.answer.ids[label][0]] for label in self.labels])
        for j, label in enumerate(self.labels):
            seq = self.answer.ids[label]
            if len(seq) < 2:
                continue
            cont = self.model(input_ids=torch.tensor([list(seq[:-1])], device=self.device),
                              past_key_values=copy.deepcopy(cache), use_cache=True)
            logp = torch.log_softmax(cont.logits[0].float(), dim=-1)
            scores[j] = scores[j] + logp[torch.arange(len(seq) - 1), torch.tensor(seq[1:])].sum()
        return scores
