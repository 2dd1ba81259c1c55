"""Training windows and validation queries for the two-tower model.

A user's training sequence is cut into windows of `max_history + 1` items (newest window first), so
every position of every window is a next-item training example (SASRec-style).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

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


@dataclass
class ValidationQueries:
    """Per user: history (item indices, oldest first), the held-out next item, the user's row, and the
    history's timestamps where the log has them (the item-item block ages items by them)."""

    histories: list[np.ndarray]
    targets: np.ndarray
    user_index: np.ndarray
    times: list[np.ndarray] | None = None


class _WindowDataset(Dataset):
    def __init__(self, windows: np.ndarray, user_index: np.ndarray):
        self.windows = torch.as_tensor(windows)
        self.user_index = torch.as_tensor(user_index, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int):
        return self.windows[i], self.user_index[i]


class _QueryDataset(Dataset):
    def __init__(self, queries: ValidationQueries, max_history: int):
        self.queries = queries
        self.max_history = max_history

    def __len__(self) -> int:
        return len(self.queries.targets)

    def __getitem__(self, i: int):
        return i


class SequenceDataModule(pl.LightningDataModule):
    """Serves training windows (shuffled, seeded) and validation query indices."""

    def __init__(
        self,
        train_sequences: list[np.ndarray],
        train_user_index: np.ndarray,
        valid: ValidationQueries | None,
        max_history: int,
        batch_size: int,
        seed: int,
    ):
        super().__init__()
        windows: list[np.ndarray] = []
        owners: list[int] = []
        for seq, user in zip(train_sequences, train_user_index):
            w = training_windows([seq], max_history)
            windows.append(w)
            owners.extend([int(user)] * len(w))
        self.windows = np.concatenate(windows) if windows else np.zeros((0, max_history + 1), np.int64)
        self.window_users = np.asarray(owners, dtype=np.int64)
        self.valid = valid
        self.max_history = max_history
        self.batch_size = batch_size
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            _WindowDataset(self.windows, self.window_users),
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            drop_last=False,
        )

    def val_dataloader(self) -> DataLoader:
        if self.valid is None:
            return []
        return DataLoader(_QueryDataset(self.valid, self.max_history), batch_size=1024, shuffle=False)
