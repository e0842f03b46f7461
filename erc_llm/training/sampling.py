"""Training order that keeps data-parallel processes equally busy (`balance_processes: true`).

Under DDP every process waits at the end of each optimizer step for the slowest one. With one packed dialogue per
micro-batch, a step's dialogues differ in length by up to 10x, so with a random order a process idles for a
sixth of MELD's training time (estimated from the dialogue lengths; 2 processes x 2 micro-batches). This sampler
draws the same kind of random order (a seeded permutation per epoch, so the same dialogues share an optimizer
step as they would under any random order) and only decides, inside each step, which process computes which
dialogue: longest first, each to the process with the fewest tokens so far that still has a free slot. The
step's gradient is the same sum whoever computes it, so training is unchanged up to float summation order.

The order is laid out for accelerate's sharding (batch i of `per_device_batch` indices goes to process
i % world_size; a process's micro-batches k = 0 .. accumulation - 1 of a step are batches k * world_size + rank).
A last step with fewer dialogues than a full one keeps its random order.

`group_steps` > 0 (`group_steps_by_length`) goes further and does change which dialogues share a step: the
permutation is cut into windows of that many steps, each window sorted by length and cut into steps, and the window's
steps shuffled, so a step's dialogues are of similar length and its processes finish together. Every dialogue is
still seen once per epoch in a seeded random window; what changes is that short and long dialogues rarely meet.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def balanced_step(lengths: Sequence[int], step: Sequence[int], world_size: int, slots: int) -> list[list[int]]:
    """One full step's indices dealt out: `slots` per process, near-equal total length per process."""
    loads = [0] * world_size
    assigned: list[list[int]] = [[] for _ in range(world_size)]
    for index in sorted(step, key=lambda i: (-lengths[i], i)):
        rank = min((r for r in range(world_size) if len(assigned[r]) < slots), key=lambda r: (loads[r], r))
        assigned[rank].append(index)
        loads[rank] += lengths[index]
    return assigned


class ProcessBalancedSampler(Sampler[int]):
    """A seeded random order whose every optimizer step is split evenly (in tokens) over the processes."""

    def __init__(self, lengths: Sequence[int], world_size: int, per_device_batch: int, accumulation: int,
                 seed: int, group_steps: int = 0) -> None:
        self.lengths = list(lengths)
        self.world_size, self.per_device_batch, self.accumulation = world_size, per_device_batch, accumulation
        self.seed = seed
        self.group_steps = group_steps
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.epoch))

    def order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        shuffled = torch.randperm(len(self.lengths), generator=generator).tolist()
        slots = self.per_device_batch * self.accumulation  # dialogues per process per step
        size = slots * self.world_size
        if self.group_steps > 0:
            shuffled = self.grouped_by_length(shuffled, size, generator)
        out: list[int] = []
        for start in range(0, len(shuffled), size):
            step = shuffled[start:start + size]
            if len(step) < size:
                out.extend(step)
                continue
            assigned = balanced_step(self.lengths, step, self.world_size, slots)
            for k in range(self.accumulation):  # micro-batch k of process r is batch k * world_size + r
                for rank in range(self.world_size):
                    out.extend(assigned[rank][k * self.per_device_batch:(k + 1) * self.per_device_batch])
        return out

    def grouped_by_length(self, shuffled: list[int], size: int, generator: torch.Generator) -> list[int]:
        """Windows of `group_steps` steps, each sorted by length into steps that are then shuffled; the tail that
        does not fill a step stays as drawn."""
        full = len(shuffled) // size * size
        out: list[int] = []
        for start in range(0, full, size * self.group_steps):
            window = sorted(shuffled[start:min(start + size * self.group_steps, full)],
                            key=lambda i: (self.lengths[i], i))
            steps = [window[k:k + size] for k in range(0, len(window), size)]
            for s in torch.randperm(len(steps), generator=generator).tolist():
                out.extend(steps[s])
        return out + shuffled[full:]


def process_loads(order: Sequence[int], lengths: Sequence[int], world_size: int, per_device_batch: int,
                  accumulation: int) -> list[list[int]]:
    """Tokens per process in each full optimizer step of `order`, as accelerate shards it
    (evaluation/process_balance.py; tests/test_sampling.py checks the order with accelerate's own sharding)."""
    size = per_device_batch * accumulation * world_size
    loads = []
    for start in range(0, len(order) - size + 1, size):
        step = order[start:start + size]
        batches = [step[b * per_device_batch:(b + 1) * per_device_batch] for b in range(accumulation * world_size)]
        loads.append([sum(lengths[i] for b in batches[rank::world_size] for i in b) for rank in range(world_size)])
    return loads
