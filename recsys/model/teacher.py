"""An item-item teacher for training the two-tower model (`train.teacher: ease`).

EASE (Steck 2019) is a closed-form ridge regression that predicts each item of a user from all their
other items. On collaborative signal alone it is a stronger ranker than a 64-d factor model trained
with a softmax, but it is an n x n matrix over the training catalog: it cannot score an item it has
not seen and does not fit the serving path. So it is used only while training, as a teacher: the
student (the two towers) learns to match the teacher's ranking of the candidates as well as the
held-out item itself (`DistillationTerm`, a loss term of recsys.model.module). Serving, the bundle
and new items are unchanged.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from recsys.model.item_item import GramSpectrum

logger = logging.getLogger(__name__)


def ease_weights(sequences: list[np.ndarray], n_items: int, l2: float, max_items: int) -> torch.Tensor:
    """EASE item-item weights B (float32 [n_items, n_items], zero diagonal) of the training sequences,
    from the same solver as the item-item block (`GramSpectrum`); refused above `max_items`."""
    weights = GramSpectrum.of_sequences(sequences, n_items, max_items).ease_weights(l2)
    logger.info("EASE teacher: %d items, l2=%g", n_items, l2)
    return torch.as_tensor(weights)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    excluded: torch.Tensor,
) -> torch.Tensor:
    """Mean KL(teacher || student) over each row's candidates, after dropping `excluded` ones (the
    other items of the user's window: known positives, which neither model should be asked to rank).
    All arguments are [rows, candidates]; the logits are already divided by their temperatures. The
    teacher is a target: no gradient flows to it."""
    # A large finite logit rather than -inf: an excluded entry then has probability 0 under both models
    # and a finite log-ratio, so neither the loss nor its gradient sees 0 * inf.
    with torch.no_grad():
        teacher_log_p = torch.log_softmax(teacher_logits.masked_fill(excluded, -1e9), dim=-1)
    return _KLToTeacher.apply(student_logits, teacher_log_p, excluded)


class _KLToTeacher(torch.autograd.Function):
    """Mean over rows of KL(p_t || softmax(z)) with its gradient in closed form, softmax(z) - p_t per row
    (0 at excluded entries, where both are 0). The same values and gradients as autograd through
    masked_fill, log_softmax, exp and the product, with one [rows, candidates] tensor kept for backward
    instead of several, and a backward of one product: on ml-1m this term was half of a training step."""

    @staticmethod
    def forward(ctx, student_logits: torch.Tensor, teacher_log_p: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
        rows = max(student_logits.shape[0], 1)
        student_log_p = torch.log_softmax(student_logits.masked_fill(excluded, -1e9), dim=-1)
        teacher_p = teacher_log_p.exp()
        # each row's sum of p_t * (log p_t - log p_s) as a dot product (no [rows, candidates] product to sum)
        loss = torch.bmm(teacher_p.unsqueeze(1), (teacher_log_p - student_log_p).unsqueeze(2)).sum() / rows
        if not student_logits.shape[0]:
            loss = student_logits.new_tensor(float("nan"))
        ctx.save_for_backward(student_log_p.exp_().sub_(teacher_p).div_(rows))  # d loss / d logits
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (gradient,) = ctx.saved_tensors
        return gradient * grad, None, None


class DistillationTerm:
    """KL(teacher || student) over a step's candidates, for the same user states as the softmax: the
    teacher scores what the tower read for that target (all_but_one: the rest of the window; next_item:
    the items up to it), counting only items the tower saw. The window's other items and items the
    teacher never saw (no training interactions: new items) are left out of both distributions; the
    target stays in."""

    name = "distill"

    def __init__(self, weights: torch.Tensor, known: np.ndarray, weight: float, temperature: float, objective: str):
        self.weights = weights  # [n_items, n_items] EASE B
        self.known = torch.as_tensor(np.asarray(known, dtype=bool))
        self.weight, self.temperature, self.objective = weight, temperature, objective

    def __call__(self, step) -> torch.Tensor:
        windows, inputs, seen, use = step.windows, step.inputs, step.seen, step.use
        n_windows, n_items = windows.shape[0], self.weights.shape[0]
        with torch.no_grad():  # the teacher's side is a target: [targets, C] tensors built in place
            weights = self.weights[:, step.candidates]  # [n_items, C]
            targets = windows[:, -inputs.shape[1] :][use]
            window_of = torch.nonzero(use)[:, 0]  # each state's window, in the row-major order of the states
            if self.objective == "all_but_one":
                # Sum over the window, minus the target's own row: one [windows, n_items] x [n_items, C] product.
                seen_rows = torch.zeros(n_windows, n_items, device=windows.device)
                seen_rows.scatter_add_(1, inputs.clamp(min=0), seen.float())
                teacher = (seen_rows @ weights)[window_of]
                target_seen = seen[use]
                # A target the tower read (every one, from the module's all_but_one) is taken out of its sum.
                teacher -= weights[targets] if bool(target_seen.all()) else weights[targets] * target_seen.float().unsqueeze(1)
            else:
                # Prefix sums along the window: [windows, L, C], fine for the short windows of ordered logs.
                teacher = (weights[inputs.clamp(min=0)] * seen.unsqueeze(-1)).cumsum(dim=1)[use]
            teacher /= self.temperature
            members = torch.zeros(n_windows, n_items, device=windows.device)
            members.scatter_add_(1, windows.clamp(min=0), (windows >= 0).float())
            excluded = (members[:, step.candidates] > 0)[window_of] | ~self.known[step.candidates].unsqueeze(0)
            excluded[torch.arange(len(step.labels), device=step.labels.device), step.labels] = False
        return distillation_loss(step.logits, teacher, excluded)
