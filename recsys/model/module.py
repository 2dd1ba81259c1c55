"""LightningModule: next-item softmax over a step's candidates, plus named optional loss terms.

One loss: cross-entropy of each target against the step's candidate items (`recsys.model.negatives`:
the step's own targets plus uniform draws, logQ-corrected, or the whole catalog). Optional terms
(`train.teacher`: match an EASE teacher's ranking, recsys.model.teacher) each read the same step and
are mixed in by their weight. Validation ranks the held-out items the one way the project ranks
(`recsys.eval.protocol.RankingJudge`), through the model's own serving code (`ModelScorer`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from recsys.config import TrainConfig
from recsys.eval.protocol import valid_monitor
from recsys.model.negatives import NegativeSampler
from recsys.model.two_tower import FeatureTensors, TwoTowerModel


def keep_random_positions(use: torch.Tensor, k: int) -> torch.Tensor:
    """Of each row's True positions keep at most k, chosen uniformly at random (torch's global RNG)."""
    if use.shape[1] <= k:
        return use
    draw = torch.rand(use.shape, device=use.device).masked_fill(~use, 2.0)  # unused positions sort last
    chosen = torch.zeros_like(use)
    chosen.scatter_(1, draw.topk(k, dim=1, largest=False).indices, True)
    return chosen & use


@dataclass
class Step:
    """One training step's scored positions, what the loss and every optional term read."""

    windows: torch.Tensor  # [B, L + 1] item indices (-1 = padding)
    inputs: torch.Tensor  # [B, L] what the user tower read
    seen: torch.Tensor  # [B, L] bool, positions the tower saw
    use: torch.Tensor  # [B, L] bool, positions that are targets (row-major order of `states`)
    candidates: torch.Tensor  # [C] item indices
    labels: torch.Tensor  # [T] each target's column among the candidates
    logits: torch.Tensor  # [T, C] scores / temperature, before the logQ correction
    log_q: torch.Tensor | None  # [C] log inclusion probability of each candidate (None: no correction)


class LossTerm(Protocol):
    """An optional part of the loss: loss = (1 - weight) * loss + weight * term(step)."""

    name: str
    weight: float

    def __call__(self, step: Step) -> torch.Tensor: ...


class TwoTowerModule(pl.LightningModule):
    def __init__(
        self,
        model: TwoTowerModel,
        features: FeatureTensors,
        train_cfg: TrainConfig,
        sampler: NegativeSampler,
        validate: Callable[[TwoTowerModel], dict[str, float]] | None = None,
        terms: Sequence[LossTerm] = (),
    ):
        """`validate(model)`: validation metrics ("ndcg@10": ...) of the model as it stands."""
        super().__init__()
        self.model = model
        self.features = features
        self.cfg = train_cfg
        self.n_items = features.n
        self.sampler = sampler
        self.validate = validate
        self.terms = list(terms)
        self._ema: dict[str, torch.Tensor] | None = None
        self._live: dict[str, torch.Tensor] | None = None

    # ----- weight averaging: validate (and keep) an exponential moving average of the weights -----
    # (Not Lightning's WeightAveraging callback: it swaps the live weights back at validation-epoch end,
    # before the keep-best callback copies the state, so the best state saved would be the live one.)
    def on_fit_start(self) -> None:
        if self.cfg.ema_decay > 0:
            self._ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self._ema is None:
            return
        # Warm-up (as in TF's ExponentialMovingAverage): early on the average must not drag the
        # random initialisation along for hundreds of steps.
        step = self.global_step
        decay = min(self.cfg.ema_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for name, value in self.model.state_dict().items():
                if value.dtype.is_floating_point:
                    self._ema[name].mul_(decay).add_(value.detach(), alpha=1.0 - decay)
                else:
                    self._ema[name].copy_(value)

    def on_validation_start(self) -> None:
        # Score the averaged weights; callbacks (early stopping keeps the best state) see them too,
        # and on_validation_end puts the live weights back for training.
        if self._ema is not None and not self.trainer.sanity_checking:
            self._live = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(self._ema)

    def on_validation_end(self) -> None:
        if self._live is not None:
            self.model.load_state_dict(self._live)
            self._live = None

    def on_train_end(self) -> None:
        # Without validation (a refit for a fixed number of epochs) the model keeps the average too.
        if self._ema is not None and self.validate is None:
            self.model.load_state_dict(self._ema)

    # ----- training -----
    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def training_step(self, batch, batch_idx):
        step = self.score_step(batch)
        loss = F.cross_entropy(step.logits if step.log_q is None else step.logits - step.log_q, step.labels)
        n_targets = int(step.labels.numel())
        for term in self.terms:
            value = term(step)
            self.log(f"train/{term.name}_loss", value, on_step=False, on_epoch=True, batch_size=n_targets)
            loss = (1.0 - term.weight) * loss + term.weight * value
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n_targets)
        return loss

    def _positions(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs, targets, use) of `train.objective`: next_item predicts each item from those before
        it; all_but_one predicts every item of the window from all the others, as a set."""
        if self.cfg.objective == "all_but_one":
            inputs = targets = windows
            valid_in = inputs >= 0
            use = valid_in & (valid_in.sum(dim=1, keepdim=True) >= 2)
        else:
            inputs, targets = windows[:, :-1], windows[:, 1:]
            use = (inputs >= 0) & (targets >= 0)
        if self.cfg.targets_per_window is not None:
            use = keep_random_positions(use, self.cfg.targets_per_window)
        return inputs, targets, use

    def score_step(self, windows: torch.Tensor) -> Step:
        """The user states at each target position scored against the sampler's candidates, as one
        addmm: the temperature scales the small factor matrices and the item bias rides in the row term."""
        inputs, targets, use = self._positions(windows)
        seen = inputs >= 0
        flat_targets = targets[use]
        candidates, log_q = self.sampler.candidates(flat_targets)
        needed = torch.unique(torch.cat([inputs[seen], candidates]))
        vectors, biases = self.model.item_vectors_and_bias(self.features.rows(needed))
        row_of = torch.full((self.n_items,), -1, dtype=torch.long, device=windows.device)  # catalog index -> row of `vectors`
        row_of[needed] = torch.arange(len(needed), device=windows.device)
        tower = self.model.user_tower
        encode = tower.leave_one_out if self.cfg.objective == "all_but_one" else tower
        states = encode(vectors[row_of[inputs.clamp(min=0)]], seen)[use]
        rows = row_of[candidates]
        inv_t = 1.0 / self.cfg.temperature
        logits = torch.addmm(biases[rows] * inv_t, states * inv_t, vectors[rows].T)
        column_of = torch.full((self.n_items,), -1, dtype=torch.long, device=windows.device)
        column_of[candidates] = torch.arange(len(candidates), device=windows.device)
        return Step(windows, inputs, seen, use, candidates, column_of[flat_targets], logits, log_q)

    # ----- validation: `validate` ranks every validation query once per epoch -----
    def validation_step(self, batch, batch_idx):
        if self.validate is None:
            return
        for name, value in self.validate(self.model).items():
            self.log(valid_monitor(name), value, prog_bar=name == self.cfg.valid_metric, batch_size=1)
