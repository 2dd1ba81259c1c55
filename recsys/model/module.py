"""LightningModule: next-item softmax over mixed in-batch + uniform negatives with logQ correction.

Candidates of a step are the unique targets of the batch (in-batch negatives, drawn in proportion
to popularity) plus `num_uniform_negatives` items drawn uniformly from the whole catalog. Because the
candidate set is a de-duplicated sample, each logit is corrected by log P(item in the set), which
undoes the popularity bias of in-batch sampling (Yi et al. 2019; Yang et al. 2020). When the set
covers the catalog the correction vanishes, as it should. With `train.teacher`, the loss also asks
the towers to rank those candidates as an item-item teacher does (recsys.model.teacher).
"""

from __future__ import annotations

import math

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from recsys.config import TrainConfig
from recsys.model.datamodule import ValidationQueries
from recsys.model.teacher import distillation_loss
from recsys.model.two_tower import FeatureTensors, TwoTowerModel, left_pad


def keep_random_positions(use: torch.Tensor, k: int) -> torch.Tensor:
    """Of each row's True positions keep at most k, chosen uniformly at random (torch's global RNG)."""
    if use.shape[1] <= k:
        return use
    draw = torch.rand(use.shape, device=use.device).masked_fill(~use, 2.0)  # unused positions sort last
    chosen = torch.zeros_like(use)
    chosen.scatter_(1, draw.topk(k, dim=1, largest=False).indices, True)
    return chosen & use


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, excluded) -> torch.Tensor:
    """0-based rank of each row's target (how many items score strictly higher), each row's `excluded`
    items left out. Early stopping and `recsys.model.train.validation_score` both rank with it, so an
    ensemble is validated exactly as a single model is. Masks `scores` in place. `excluded` is a list of
    item-index arrays, or a bool [n_queries, n_items] mask (`exclusion_mask`) when one set of queries is
    ranked many times."""
    mask = excluded if isinstance(excluded, torch.Tensor) else exclusion_mask(excluded, scores.shape[1])
    scores.masked_fill_(mask, float("-inf"))
    target_scores = scores[torch.arange(len(scores)), targets]
    return (scores > target_scores.unsqueeze(1)).sum(dim=1)


def exclusion_mask(excluded, n_items: int) -> torch.Tensor:
    """bool [len(excluded), n_items]: True at each query's excluded items (for `target_ranks`)."""
    mask = torch.zeros(len(excluded), n_items, dtype=torch.bool)
    for row, items in enumerate(excluded):
        mask[row, torch.as_tensor(np.asarray(items, dtype=np.int64))] = True
    return mask


def ranking_metrics(rank: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    """Recall@k and NDCG@k ("recall@10", "ndcg@10", ...) of one held-out target per query, from its 0-based rank."""
    rank = rank.double()
    metrics = {}
    for k in ks:
        hit = (rank < k).double()
        metrics[f"recall@{k}"] = float(hit.mean())
        metrics[f"ndcg@{k}"] = float((hit / torch.log2(rank + 2)).mean())
    return metrics


def valid_monitor(metric: str) -> str:
    """The logged key of a validation metric ("ndcg@10" -> "valid/ndcg_at_10")."""
    return f"valid/{metric.replace('@', '_at_')}"


class TwoTowerModule(pl.LightningModule):
    def __init__(
        self,
        model: TwoTowerModel,
        features: FeatureTensors,
        train_cfg: TrainConfig,
        item_popularity: np.ndarray,
        valid: ValidationQueries | None = None,
        exclude_in_valid: list[np.ndarray] | None = None,
        valid_ks: tuple[int, ...] = (10, 20),
        teacher_weights: torch.Tensor | None = None,
    ):
        super().__init__()
        self.model = model
        self.features = features
        self.cfg = train_cfg
        self.n_items = int(features.categories.shape[0])
        popularity = np.asarray(item_popularity, dtype=np.float64) + 1e-9
        self.register_buffer("item_prob", torch.as_tensor(popularity / popularity.sum(), dtype=torch.float32), persistent=False)
        # Item-item teacher (train.teacher), used only for the loss; it knows nothing of items without
        # training interactions (new items), so those are never in its part of the loss.
        self.register_buffer("teacher_weights", teacher_weights, persistent=False)
        self.register_buffer("teacher_knows", torch.as_tensor(np.asarray(item_popularity) > 0), persistent=False)
        self.valid = valid
        self.exclude_in_valid = exclude_in_valid
        self.valid_ks = valid_ks
        self._valid_item_vectors: torch.Tensor | None = None
        self._valid_item_bias: torch.Tensor | None = None
        self._valid_hits: list[torch.Tensor] = []
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

    # ----- training -----
    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        if self.cfg.lr_decay_factor >= 1.0 or self.valid is None:
            return optimizer
        # Smaller steps once validation stalls: the plateau a constant rate reaches is noise around a
        # better point. Early stopping still reads the same metric; its patience should exceed this one.
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=self.cfg.lr_decay_factor, patience=self.cfg.lr_decay_patience
        )
        schedule = {"scheduler": plateau, "monitor": valid_monitor(self.cfg.valid_metric), "interval": "epoch"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def on_train_epoch_start(self) -> None:
        # The rate is stepped only between epochs, so one value per epoch says it all.
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=False, on_epoch=True)

    def _candidates(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(candidate item indices, log inclusion probability or None for a full softmax)."""
        n_uniform = self.cfg.num_uniform_negatives
        if n_uniform < 0 or n_uniform >= self.n_items:
            return torch.arange(self.n_items, device=targets.device), None
        uniform = torch.randint(0, self.n_items, (n_uniform,), device=targets.device)
        candidates = torch.unique(torch.cat([targets, uniform]))
        if not self.cfg.logq_correction:
            return candidates, None
        p = self.item_prob[candidates].double()
        n_targets = targets.numel()
        # P(item absent from the set) = P(not among the in-batch draws) * P(not among the uniform draws)
        log_absent = n_targets * torch.log1p(-p) + n_uniform * math.log1p(-1.0 / self.n_items)
        log_included = torch.log(-torch.expm1(log_absent)).float()
        return candidates, log_included

    def training_step(self, batch, batch_idx):
        windows, users = batch
        if self.cfg.objective == "all_but_one":
            # Every item of the window is a target, predicted from all the others (a set, no order).
            inputs = targets = windows
            valid_in = inputs >= 0
            use = valid_in & (valid_in.sum(dim=1, keepdim=True) >= 2)
        else:
            inputs, targets = windows[:, :-1], windows[:, 1:]
            valid_in = inputs >= 0
            use = valid_in & (targets >= 0)
        if self.cfg.targets_per_window is not None:
            use = keep_random_positions(use, self.cfg.targets_per_window)
        flat_targets = targets[use]
        candidates, log_q = self._candidates(flat_targets)
        needed = torch.unique(torch.cat([inputs[valid_in], candidates]))
        vectors, biases = self.model.item_vectors_and_bias(self.features.rows(needed))
        # Map catalog indices to rows of `vectors`.
        lookup = torch.full((self.n_items,), -1, dtype=torch.long, device=windows.device)
        lookup[needed] = torch.arange(len(needed), device=windows.device)
        seq_vectors = vectors[lookup[inputs.clamp(min=0)]]
        user_index = users if self.model.user_tower.user_embedding is not None else None
        tower = self.model.user_tower
        encode = tower.leave_one_out if self.cfg.objective == "all_but_one" else tower
        seen = valid_in
        if self.cfg.history_dropout > 0:
            seen = valid_in & (torch.rand(valid_in.shape, device=valid_in.device) >= self.cfg.history_dropout)
        states = encode(seq_vectors, seen, user_index)[use]
        rows = lookup[candidates]
        # One addmm makes the [targets, candidates] logits: the temperature scales the small factors
        # and the per-candidate terms ride in the bias row, instead of passes over the big matrix.
        inv_t = 1.0 / self.cfg.temperature
        row_terms = biases[rows] * inv_t
        logits = torch.addmm(row_terms if log_q is None else row_terms - log_q, states * inv_t, vectors[rows].T)
        cand_pos = torch.full((self.n_items,), -1, dtype=torch.long, device=windows.device)
        cand_pos[candidates] = torch.arange(len(candidates), device=windows.device)
        labels = cand_pos[flat_targets]
        loss = F.cross_entropy(logits, labels)
        if self.teacher_weights is not None:
            student_logits = logits if log_q is None else logits + log_q  # the teacher compares uncorrected scores
            distill = self._distillation(windows, inputs, seen, use, candidates, labels, student_logits)
            self.log("train/distill_loss", distill, on_step=False, on_epoch=True, batch_size=int(labels.numel()))
            loss = (1.0 - self.cfg.teacher_weight) * loss + self.cfg.teacher_weight * distill
        weight = self.cfg.content_loss_weight
        if weight > 0 and self.features.id_index is not None and self.model.item_tower.id_embedding is not None:
            # Hybrid model: the same user states must also rank content-only candidates, because that
            # is all a new item has. Without this term the identity residuals soak up the warm-item
            # signal and the content path (the cold-start model) trains less.
            content, content_bias = self.model.item_vectors_and_bias(self.features.rows(candidates), use_identity=False)
            content_terms = content_bias * inv_t
            content_logits = torch.addmm(content_terms if log_q is None else content_terms - log_q, states * inv_t, content.T)
            content_loss = F.cross_entropy(content_logits, labels)
            self.log("train/content_loss", content_loss, on_step=False, on_epoch=True, batch_size=int(labels.numel()))
            loss = (1.0 - weight) * loss + weight * content_loss
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=int(flat_targets.numel()))
        return loss

    def _distillation(
        self,
        windows: torch.Tensor,
        inputs: torch.Tensor,
        seen: torch.Tensor,
        use: torch.Tensor,
        candidates: torch.Tensor,
        labels: torch.Tensor,
        student_logits: torch.Tensor,
    ) -> torch.Tensor:
        """KL(teacher || student) over the step's candidates, for the same user states as the softmax:
        the teacher scores what the tower read for that target (all_but_one: the rest of the window;
        next_item: the items up to it), counting only items the tower saw. The window's other items
        and items the teacher never saw are left out of both distributions; the target stays in."""
        n_windows = windows.shape[0]
        weights = self.teacher_weights[:, candidates]  # [n_items, C]
        targets = windows[:, -inputs.shape[1] :][use]
        window_of = torch.nonzero(use)[:, 0]  # each state's window, in the row-major order of `states`
        if self.cfg.objective == "all_but_one":
            # Sum over the window, minus the target's own row: one [windows, n_items] x [n_items, C] product.
            seen_rows = torch.zeros(n_windows, self.n_items, device=windows.device)
            seen_rows.scatter_add_(1, inputs.clamp(min=0), seen.float())
            own = weights[targets] * seen[use].float().unsqueeze(1)
            teacher = (seen_rows @ weights)[window_of] - own
        else:
            # Prefix sums along the window: [windows, L, C], fine for the short windows of ordered logs.
            rows = weights[inputs.clamp(min=0)] * seen.unsqueeze(-1)
            teacher = rows.cumsum(dim=1)[use]
        members = torch.zeros(n_windows, self.n_items, device=windows.device)
        members.scatter_add_(1, windows.clamp(min=0), (windows >= 0).float())
        excluded = (members[:, candidates] > 0)[window_of] | ~self.teacher_knows[candidates].unsqueeze(0)
        excluded[torch.arange(len(labels), device=labels.device), labels] = False
        return distillation_loss(student_logits, teacher / self.cfg.teacher_temperature, excluded)

    # ----- validation: full ranking of the held-out next item -----
    def on_validation_epoch_start(self) -> None:
        with torch.no_grad():
            self._valid_item_vectors, self._valid_item_bias = self.model.item_vectors_and_bias(self.features)
        self._valid_hits = []

    def validation_step(self, batch, batch_idx):
        assert self.valid is not None
        rows = batch.cpu().numpy()
        histories = [self.valid.histories[r] for r in rows]
        padded, valid = left_pad([h[-self.model.cfg.max_history :] for h in histories], self.model.cfg.max_history)
        vectors = self._valid_item_vectors
        seq = vectors[torch.as_tensor(padded).clamp(min=0)]
        user_index = None
        if self.model.user_tower.user_embedding is not None:
            user_index = torch.as_tensor(self.valid.user_index[rows], dtype=torch.long)
        users = self.model.user_tower.encode_last(seq, torch.as_tensor(valid), user_index)
        scores = users @ vectors.T + self._valid_item_bias
        excluded = [self.exclude_in_valid[r] for r in rows] if self.exclude_in_valid is not None else histories
        self._valid_hits.append(target_ranks(scores, torch.as_tensor(self.valid.targets[rows]), excluded))

    def on_validation_epoch_end(self) -> None:
        if not self._valid_hits:
            return
        metrics = ranking_metrics(torch.cat(self._valid_hits), self.valid_ks)
        for k in self.valid_ks:
            for name in ("recall", "ndcg"):
                self.log(valid_monitor(f"{name}@{k}"), metrics[f"{name}@{k}"], prog_bar=k == self.valid_ks[0])
        self._valid_item_vectors = None
