"""Deterministic, resumable data order for distributed training.

Every sample of the run has a global position g = step x global_batch + rank x batch + b. Its
item index (an epoch-wise permutation) and its random seed depend only on (seed, g), so one
process with the global batch sees exactly the samples that N processes see together, and a
resumed run continues the same sequence from its step.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy SeedSequence)."""
    state = np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(
        2, dtype=np.uint32
    )
    return int((int(state[0]) << 31) ^ int(state[1]))


class StepBatchSampler:
    """Yields, per step, this rank's list of (item index, sample seed) pairs, endlessly.

    Pass as `batch_sampler` to a DataLoader; the dataset's `__getitem__` receives the pair.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
    ) -> None:
        if num_items < 1:
            raise ValueError("the dataset is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step
        self._perm_epoch = -1
        self._perm = np.arange(num_items)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            rng = np.random.default_rng(mix_seed(self.seed, 0x5EED, epoch))
            self._perm = rng.permutation(self.num_items)
            self._perm_epoch = epoch
        return self._perm

    def batch(self, step: int) -> list[tuple[int, int]]:
        """This rank's (item index, sample seed) pairs at `step`."""
        global_batch = self.batch_size * self.world_size
        first = step * global_batch + self.rank * self.batch_size
        pairs = []
        for g in range(first, first + self.batch_size):
            epoch, i = divmod(g, self.num_items)
            pairs.append((int(self._permutation(epoch)[i]), mix_seed(self.seed, g)))
        return pairs

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1
