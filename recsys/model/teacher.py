"""An item-item teacher for training the two-tower model (`train.teacher: ease`).

EASE (Steck 2019) is a closed-form ridge regression that predicts each item of a user from all their
other items. On collaborative signal alone it is a stronger ranker than a 64-d factor model trained
with a softmax, but it is an n x n matrix over the training catalog: it cannot score an item it has
not seen and does not fit the serving path. So it is used only while training, as a teacher: the
student (the two towers) learns to match the teacher's ranking of the candidates as well as the
held-out item itself. Serving, the bundle and new items are unchanged.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)


def interaction_gram(sequences: list[np.ndarray], n_items: int, users_per_chunk: int = 4096) -> np.ndarray:
    """X^T X (float64 [n_items, n_items]) of the binary user x item matrix, built a chunk of users at a
    time so the dense user rows never exceed `users_per_chunk` x n_items."""
    gram = np.zeros((n_items, n_items), dtype=np.float64)
    for start in range(0, len(sequences), users_per_chunk):
        chunk = sequences[start : start + users_per_chunk]
        rows = np.zeros((len(chunk), n_items), dtype=np.float32)
        for r, items in enumerate(chunk):
            rows[r, np.asarray(items, dtype=np.int64)] = 1.0  # repeats of an item count once
        gram += rows.T.astype(np.float64) @ rows
    return gram


def ease_weights(sequences: list[np.ndarray], n_items: int, l2: float, max_items: int) -> torch.Tensor:
    """EASE item-item weights B (float32 [n_items, n_items], zero diagonal): a user with item set H
    scores item j as sum_{i in H} B[i, j]. `l2` is the ridge penalty; the closed form needs an
    n_items x n_items inverse, so catalogs above `max_items` are refused rather than left to run out
    of memory."""
    if n_items > max_items:
        raise ValueError(
            f"train.teacher=ease needs an {n_items} x {n_items} matrix inverse; the catalog exceeds "
            f"train.teacher_max_items={max_items} (raise it if memory allows, or set train.teacher=none)"
        )
    if l2 <= 0:
        raise ValueError(f"train.teacher_l2 must be > 0, got {l2}")
    gram = interaction_gram(sequences, n_items)
    gram[np.diag_indices(n_items)] += l2
    precision = np.linalg.inv(gram)
    weights = precision / -np.diag(precision)  # column j divided by -P[j, j]
    weights[np.diag_indices(n_items)] = 0.0
    logger.info("EASE teacher: %d items, l2=%g", n_items, l2)
    return torch.as_tensor(weights, dtype=torch.float32)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    excluded: torch.Tensor,
) -> torch.Tensor:
    """Mean KL(teacher || student) over each row's candidates, after dropping `excluded` ones (the
    other items of the user's window: known positives, which neither model should be asked to rank).
    All arguments are [rows, candidates]; the logits are already divided by their temperatures."""
    # A large finite logit rather than -inf: an excluded entry then has probability 0 under both models
    # and a finite log-ratio, so neither the loss nor its gradient sees 0 * inf.
    teacher_log_p = torch.log_softmax(teacher_logits.masked_fill(excluded, -1e9), dim=-1)
    student_log_p = torch.log_softmax(student_logits.masked_fill(excluded, -1e9), dim=-1)
    return (teacher_log_p.exp() * (teacher_log_p - student_log_p)).sum(dim=-1).mean()
