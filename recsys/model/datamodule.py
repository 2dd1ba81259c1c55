"""Training windows for the two-tower model, and the data module that serves them.

A user's training sequence is cut into windows of `max_history + 1` items (newest window first), so
every position of every window is a next-item training example (SASRec-style).
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from recsys.model.two_tower import left_pad


def training_windows(sequences: list[np.ndarray], max_history: int, min_length: int = 2) -> np.ndarray:
    """[W, max_history + 1] item indices, left-padded with -1; windows step back from the newest item."""
    span = max_history + 1
    windows: list[np.ndarray] = []
    for seq in sequences:
        if len(seq) < min_length:
            continue
        end = len(seq)
        while end >= min_length:
            windows.append(seq[max(0, end - span) : end])
            end -= max_history
    padded, _ = left_pad(windows, span)
    return padded


class SequenceDataModule(pl.LightningDataModule):
    """Serves training windows (shuffled, seeded) and, when there is validation, one batch that stands
    for the whole validation pass (the module ranks every validation query at once)."""

    def __init__(self, train_sequences: list[np.ndarray], max_history: int, batch_size: int, seed: int, validate: bool):
        super().__init__()
        self.windows = torch.as_tensor(training_windows(train_sequences, max_history))
        self.batch_size = batch_size
        self.seed = seed
        self.validate = validate

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.windows, batch_size=self.batch_size, shuffle=True, generator=generator, drop_last=False)

    def val_dataloader(self) -> DataLoader | list:
        return DataLoader([0], batch_size=1) if self.validate else []
