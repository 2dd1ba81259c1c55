"""Negative samplers: which items each training step scores its targets against.

A sampler returns the step's candidate items and, for a sampled set, log P(item in the set), which the
loss subtracts from each logit (logQ correction, Yi et al. 2019; Yang et al. 2020): in-batch negatives
are drawn in proportion to popularity, and without the correction the model learns to push popular
items down. A candidate set that covers the catalog needs no correction.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch


class NegativeSampler(Protocol):
    def candidates(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(sorted unique candidate item indices, which include every target; log inclusion probability
        of each, or None when no correction applies)."""
        ...


class WholeCatalog:
    """Every item is a candidate: the exact softmax (small catalogs)."""

    def __init__(self, n_items: int):
        self.n_items = n_items

    def candidates(self, targets: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.arange(self.n_items, device=targets.device), None


class InBatchAndUniform:
    """The step's own targets (in-batch negatives, drawn by popularity) plus `n_uniform` items drawn
    uniformly from the catalog, de-duplicated, with the logQ correction of that mixed draw."""

    def __init__(self, popularity: np.ndarray, n_uniform: int):
        counts = np.asarray(popularity, dtype=np.float64) + 1e-9
        self.item_prob = torch.as_tensor(counts / counts.sum(), dtype=torch.float64)
        self.n_items = len(counts)
        self.n_uniform = n_uniform

    def candidates(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        uniform = torch.randint(0, self.n_items, (self.n_uniform,), device=targets.device)
        candidates = torch.unique(torch.cat([targets, uniform]))
        p = self.item_prob.to(targets.device)[candidates]
        # P(item absent) = P(not among the in-batch draws) * P(not among the uniform draws)
        log_absent = targets.numel() * torch.log1p(-p) + self.n_uniform * math.log1p(-1.0 / self.n_items)
        return candidates, torch.log(-torch.expm1(log_absent)).float()


def negative_sampler(popularity: np.ndarray, n_uniform: int) -> NegativeSampler:
    """The sampler of `train.num_uniform_negatives`: the whole catalog when it is no larger."""
    if n_uniform >= len(popularity):
        return WholeCatalog(len(popularity))
    return InBatchAndUniform(popularity, n_uniform)
