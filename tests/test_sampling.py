"""The process-balanced training order: same optimizer steps as accelerate's seeded random order, less waiting."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.data_loader import BatchSamplerShard, SeedableRandomSampler
from torch.utils.data import BatchSampler

from erc_llm.data.corpora import load_split
from erc_llm.training.sampling import ProcessBalancedSampler


def dialogue_lengths(data_dir: Path, corpus: str) -> list[int]:
    """A packed dialogue's length in characters (header + its lines): a proxy of its tokens."""
    return [200 + sum(len(u.text) + 20 for u in d.utterances) for d in load_split(corpus, "train", data_dir).dialogues]


def rank_loads(order: list[int], lengths: list[int], world: int, batch: int, accumulation: int) -> list[list[int]]:
    """Per optimizer step, what each process computes when accelerate shards `order` (real BatchSamplerShard)."""
    per_rank = []
    for rank in range(world):
        shard = BatchSamplerShard(BatchSampler(order, batch, drop_last=False), num_processes=world,
                                  process_index=rank, even_batches=True)
        batches = list(shard)
        per_rank.append([sum(lengths[i] for b in batches[s:s + accumulation] for i in b)
                         for s in range(0, len(batches) - accumulation + 1, accumulation)])
    steps = len(order) // (world * batch * accumulation)
    return [[per_rank[r][s] for r in range(world)] for s in range(steps)]


def idle_share(loads: list[list[int]]) -> float:
    busy = sum(sum(step) for step in loads)
    return sum(len(step) * max(step) - sum(step) for step in loads) / (busy + sum(
        len(step) * max(step) - sum(step) for step in loads))


@pytest.mark.parametrize(("world", "batch", "accumulation"), [(2, 1, 2), (2, 2, 1), (4, 1, 1), (1, 1, 4)])
def test_same_steps_as_accelerates_seeded_random_order(world: int, batch: int, accumulation: int) -> None:
    lengths = [(i * 37) % 101 + 5 for i in range(203)]
    sampler = ProcessBalancedSampler(lengths, world, batch, accumulation, seed=42)
    reference = SeedableRandomSampler(range(len(lengths)), data_seed=42)
    size = world * batch * accumulation
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        reference.set_epoch(epoch)
        ours, theirs = list(sampler), list(reference)
        assert sorted(ours) == list(range(len(lengths)))  # every dialogue once per epoch
        full = len(lengths) // size * size
        for start in range(0, full, size):  # each optimizer step holds the same dialogues
            assert set(ours[start:start + size]) == set(theirs[start:start + size])
        assert ours[full:] == theirs[full:]  # a short last step keeps its order
    sampler.set_epoch(0)
    assert list(sampler) != theirs  # epochs differ


def test_processes_wait_less_on_real_meld_dialogues(data_dir: Path) -> None:
    lengths = dialogue_lengths(data_dir, "meld")
    world, batch, accumulation = 2, 1, 2  # the recorded packed recipes on two processes
    balanced = list(ProcessBalancedSampler(lengths, world, batch, accumulation, seed=42))
    random_order = list(SeedableRandomSampler(range(len(lengths)), data_seed=42))
    waiting_random = idle_share(rank_loads(random_order, lengths, world, batch, accumulation))
    waiting_balanced = idle_share(rank_loads(balanced, lengths, world, batch, accumulation))
    # measured: random ~0.16 of process time idle, balanced ~0.07 (the best pairing of a step's 4 dialogues)
    assert waiting_random > 0.12
    assert waiting_balanced < 0.6 * waiting_random
    # one process never computes more than the other's maximum possible pairing in any step
    for step in rank_loads(balanced, lengths, world, batch, accumulation):
        assert max(step) - min(step) <= max(lengths)


def test_length_grouped_steps_keep_every_dialogue_and_group_lengths(data_dir: Path) -> None:
    lengths = dialogue_lengths(data_dir, "meld")
    world, batch, accumulation = 2, 1, 2
    size = world * batch * accumulation
    grouped = ProcessBalancedSampler(lengths, world, batch, accumulation, seed=42, group_steps=16)
    plain = ProcessBalancedSampler(lengths, world, batch, accumulation, seed=42)
    for epoch in (0, 1):
        order = grouped.order(epoch)
        assert sorted(order) == list(range(len(lengths)))  # every dialogue once per epoch
    order, reference = grouped.order(0), plain.order(0)
    full = len(order) // size * size

    def spread(o: list[int]) -> float:  # mean (longest / shortest) dialogue within a step
        steps = [[lengths[i] for i in o[s:s + size]] for s in range(0, full, size)]
        return sum(max(step) / min(step) for step in steps) / len(steps)

    assert spread(order) < 0.5 * spread(reference)
    # a window's dialogues come from the same stretch of the random permutation (it only regroups within it)
    window = size * 16
    for start in range(0, full - window + 1, window):
        assert set(order[start:start + window]) == set(reference[start:start + window])
    # steps are shuffled inside a window: not sorted from short to long
    first = [sum(lengths[i] for i in order[s:s + size]) for s in range(0, window, size)]
    assert first != sorted(first)
    waiting_plain = idle_share(rank_loads(reference, lengths, world, batch, accumulation))
    waiting_grouped = idle_share(rank_loads(order, lengths, world, batch, accumulation))
    assert waiting_grouped < 0.5 * waiting_plain
