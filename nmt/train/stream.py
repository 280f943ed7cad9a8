"""The batch stream of a run: from its position (epoch, batch index) on, each rank's share of the next
batches, collated ahead of the step by loader processes where that pays."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nmt.data import EpochBatches, TrainingData
from nmt.tokenizer import PAD_ID


def collate_group(corpus: TrainingData, group: list[np.ndarray], start_id: int) -> dict:
    """Inputs of each batch (rows of `corpus`) of `group`, and its target and total non-padding token counts
    (float64 (2,))."""
    inputs = [corpus.collate(rows, start_id) for rows in group]
    n_target = sum(x["targets"].numel() for x in inputs)
    n_tokens = n_target + sum(int((x["src"] != PAD_ID).sum()) for x in inputs)
    return {"inputs": inputs, "counts": torch.tensor([n_target, n_tokens], dtype=torch.float64)}


class _Groups(Dataset):
    """Collates groups of batches (lists of corpus indices) into model inputs, ahead of the step.

    With loader workers this runs in other processes and the DataLoader pins the tensors, so the
    training loop finds its inputs ready for non-blocking copies to the GPU.
    """

    def __init__(self, corpus: TrainingData, start_id: int) -> None:
        self.corpus, self.start_id = corpus, start_id

    def __getitem__(self, item: tuple[list[np.ndarray], tuple[int, int]]) -> dict:
        group, position = item
        return {"group": group, "position": position, **collate_group(self.corpus, group, self.start_id)}


def groups(epoch_batches: Callable[[int], EpochBatches], epoch: int, index: int, share: int, world: int,
           rank: int) -> Iterator[tuple[list[np.ndarray], tuple[int, int]]]:
    """From batch `index` of `epoch` on: this rank's `share` of each next `share * world` batches, with the
    position (epoch, batch index) after them. Epochs run into each other; `epoch_batches(e)` gives
    epoch e's batches."""
    batches = epoch_batches(epoch)
    while True:
        group = []
        while len(group) < share * world:
            if index >= len(batches):
                epoch, index = epoch + 1, 0
                batches = epoch_batches(epoch)
            group.append(batches[index])
            index += 1
        # After an epoch's last batch the position is the next epoch's start, so max_epochs stops there.
        yield group[rank * share:(rank + 1) * share], (epoch + 1, 0) if index >= len(batches) else (epoch, index)


def stream(corpus: TrainingData, positions: Iterator[tuple[list[np.ndarray], tuple[int, int]]], start_id: int,
           workers: int, device: torch.device) -> Iterator[dict]:
    """The collated groups of `positions` (see `groups`), prepared ahead by `workers` processes
    (`train.loader_workers`; -1: 2 on CUDA, with pinned memory, and none on a CPU, whose cores are
    busy with the step itself)."""
    if workers < 0:
        workers = 2 if device.type == "cuda" else 0
    loader = DataLoader(_Groups(corpus, start_id), sampler=positions, batch_size=None,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if workers else None,
                        generator=torch.Generator())  # its own seed draw leaves the dropout stream alone
    return iter(loader)
