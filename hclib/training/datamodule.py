"""Token windows from a corpus, in an order that depends only on (seed, step).

Training draws ``batch_size`` random windows of ``block_size + 1`` tokens for every
micro-batch ``i`` from a generator seeded with ``(seed, i)``. The batch of step ``i`` is
therefore a function of the seed and the step alone: a run resumed from a checkpoint at
step ``s`` starts drawing at ``i = s`` and sees exactly the batches an uninterrupted run
would have seen, with no sampler state to save. ``batch_size`` is the *global* batch: on
``W`` devices, rank ``r`` takes rows ``r b .. (r + 1) b - 1`` (``b = batch_size / W``) of the
same draw, so one device and several train on the same tokens, step for step.

Validation reads a fixed set of windows evenly spaced over the ``val`` split.

Used in: notebooks/09_small_gpt and 10_moe_llm_with_lightning.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from hclib.streams import check_count

if TYPE_CHECKING:
    from hclib.data import Corpus

__all__ = ["CorpusDataModule", "TrainWindows", "ValWindows", "window_starts"]


def window_starts(seed: int, step: int, count: int, n_tokens: int, block_size: int) -> np.ndarray:
    """The first token of each of the ``count`` windows of micro-batch ``step``.

    Drawn uniformly from ``0 .. n_tokens - block_size - 1`` (each window holds
    ``block_size + 1`` tokens: inputs and next-token targets) by NumPy's generator seeded
    with the pair ``(seed, step)``.
    """
    rng = np.random.default_rng([int(seed), int(step)])
    return rng.integers(0, n_tokens - block_size, size=count)


def _windows(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> torch.Tensor:
    rows = np.stack([np.asarray(tokens[s : s + block_size + 1]) for s in starts])
    return torch.from_numpy(rows.astype(np.int64))  # (b, T + 1)


def _check_length(tokens: np.ndarray, block_size: int, split: str) -> None:
    if len(tokens) < block_size + 1:
        raise ValueError(
            f"the {split} split holds {len(tokens)} tokens, fewer than block_size + 1 = "
            f"{block_size + 1}: lower data.block_size or use a larger corpus"
        )


class TrainWindows(IterableDataset):
    """Endless micro-batches ``(x, y, i)`` from micro-batch ``start`` on.

    ``x`` and ``y`` are ``(batch_size / world_size, block_size)`` int64 token ids, ``y`` the
    next tokens of ``x``; ``i`` is the micro-batch index (a 0-d int64 tensor). This rank's
    rows of the global draw (module docstring). With several DataLoader workers, worker
    ``w`` of ``k`` makes batches ``start + w, start + w + k, ...``, which the loader hands
    out round-robin, so the order is the same with any number of workers.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        batch_size: int,
        seed: int = 0,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.block_size = check_count(block_size, "block_size", "tokens")
        self.batch_size = check_count(batch_size, "batch_size", "sequences")
        self.world_size = check_count(world_size, "world_size", "processes")
        if batch_size % world_size:
            raise ValueError(
                f"the global batch_size={batch_size} is not divisible by the {world_size} "
                "processes (devices x nodes)"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
        _check_length(tokens, block_size, "train")
        self.tokens, self.seed, self.start, self.rank = tokens, int(seed), int(start), rank

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Micro-batch ``i``: this rank's ``(x, y, i)``."""
        starts = window_starts(self.seed, i, self.batch_size, len(self.tokens), self.block_size)
        b = self.batch_size // self.world_size
        rows = _windows(self.tokens, starts[self.rank * b : (self.rank + 1) * b], self.block_size)
        return rows[:, :-1], rows[:, 1:], torch.tensor(i)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        i = self.start + worker
        while True:
            yield self.batch(i)
            i += workers


class ValWindows(Dataset):
    """A fixed set of ``count`` windows ``(x, y)`` evenly spaced over ``tokens``.

    ``count`` is capped at the number of disjoint windows the split holds.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, count: int) -> None:
        self.block_size = check_count(block_size, "block_size", "tokens")
        check_count(count, "count", "windows")
        _check_length(tokens, block_size, "val")
        self.tokens = tokens
        count = min(count, (len(tokens) - 1) // block_size)
        last = len(tokens) - block_size - 1  # the last valid start
        self.starts = np.linspace(0, last, count).round().astype(np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = _windows(self.tokens, self.starts[j : j + 1], self.block_size)[0]
        return row[:-1], row[1:]


class CorpusDataModule(pl.LightningDataModule):
    """Training and validation windows from a corpus built by ``python -m hclib.data``.

    Args:
        corpus: the corpus name (``"shakespeare-bpe"``, ``"shakespeare-byte"``, ...), or a
            loaded :class:`hclib.data.Corpus` (its name is then what the hyperparameters
            record).
        root: the folder holding built corpora (None: ``hclib.data``'s default).
        block_size: tokens per window ``T`` (the model's context).
        batch_size: windows per micro-batch over *all* devices (the global batch); must be
            divisible by devices x nodes.
        val_batches: validation size in global batches (windows: ``val_batches * batch_size``,
            capped by the split's length).
        seed: the data order's seed (module docstring); also seeds dropout, step by step.
        num_workers: DataLoader worker processes (0: load in the training process).

    Raises:
        hclib.data.CorpusMissingError: when the corpus has not been built; its message
            says which command builds it.
    """

    def __init__(
        self,
        corpus: str | Corpus = "shakespeare-bpe",
        root: str | None = None,
        block_size: int = 256,
        batch_size: int = 32,
        val_batches: int = 8,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        from hclib.data import load_corpus  # the training stack needs the corpus package

        self.block_size = check_count(block_size, "block_size", "tokens")
        self.batch_size = check_count(batch_size, "batch_size", "sequences")
        self.val_batches = check_count(val_batches, "val_batches", "batches")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        self.seed, self.num_workers = int(seed), num_workers
        if isinstance(corpus, str):
            self.corpus = load_corpus(corpus, root=root)
        else:  # a loaded corpus: its name, not its arrays, goes into the hyperparameters
            self.corpus, corpus = corpus, corpus.name
        _check_length(self.corpus.train, block_size, "train")
        _check_length(self.corpus.val, block_size, "val")
        self.save_hyperparameters(ignore=["corpus"])
        self.hparams["corpus"] = corpus

    @property
    def vocab_size(self) -> int:
        """The corpus's vocabulary size (the CLI hands it to ``model.vocab_size``)."""
        return int(self.corpus.vocab_size)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)

    def first_micro_batch(self) -> int:
        """The micro-batch to start from: 0, or where a resumed run left off."""
        trainer = self.trainer
        if trainer is None:
            return 0
        return trainer.global_step * trainer.accumulate_grad_batches

    def train_dataloader(self) -> DataLoader:
        rank, world = self._world()
        data = TrainWindows(
            self.corpus.train,
            self.block_size,
            self.batch_size,
            seed=self.seed,
            start=self.first_micro_batch(),
            rank=rank,
            world_size=world,
        )
        return DataLoader(
            data,
            batch_size=None,  # the dataset makes whole batches
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    @property
    def val_dataset(self) -> ValWindows:
        """The fixed validation windows (the diagnostics callback probes with the first)."""
        return ValWindows(self.corpus.val, self.block_size, self.val_batches * self.batch_size)

    def val_dataloader(self) -> DataLoader:
        _, world = self._world()
        if self.batch_size % world:
            raise ValueError(
                f"the global batch_size={self.batch_size} is not divisible by the {world} "
                "processes (devices x nodes)"
            )
        return DataLoader(
            self.val_dataset,
            batch_size=self.batch_size // world,  # Lightning shards it across ranks
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    def test_dataloader(self) -> DataLoader:
        """The validation windows: the corpora have no test split, so ``python -m hclib.train
        test`` evaluates the validation split (logged as ``test/loss``)."""
        return self.val_dataloader()
