"""The two towers. Only these modules hold trainable parameters; the frozen encoders never enter here.

The item tower is a function of content features (frozen text / image embeddings and category flags),
so an item nobody has interacted with, or one added after training, still gets a vector. A hybrid
model (`model.item_id_embedding`) adds a learned residual for the items seen in training only.
The user tower reads a history of item-tower vectors, so an anonymous session history works too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from recsys.config import ModelConfig


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """bool keep-mask, each element dropped with probability p (to 1/65536), from 16 random bits an
    element: one 64-bit draw of torch's generator serves four elements. Why: CPU `bernoulli_` (what
    nn.Dropout calls) draws per element on one thread, and was a quarter of a training step."""
    if p >= 1.0:  # 32768 does not fit the int16 compare below
        return torch.zeros(shape, dtype=torch.bool, device=device)
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    threshold = round(p * 65536) - 32768
    return (bits.view(torch.int16)[:n] >= threshold).view(shape)


class FastDropout(nn.Dropout):
    """nn.Dropout (same arguments, no parameters) drawing its mask with `keep_mask`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * (keep_mask(x.shape, self.p, x.device).to(x.dtype) * (1.0 / (1.0 - self.p)))


class _EncoderLayer(nn.TransformerEncoderLayer):
    """nn.TransformerEncoderLayer (same parameters, so the same state dict and the same inference fast
    path) whose training-time dropouts, the attention weights' included, use FastDropout."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        p = float(self.dropout.p)
        self.dropout, self.dropout1, self.dropout2 = FastDropout(p), FastDropout(p), FastDropout(p)
        self.attn_dropout = FastDropout(p)

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal: bool = False):
        attention = self.self_attn
        if key_padding_mask is not None or not attention.batch_first or not attention._qkv_same_embed_dim:
            return super()._sa_block(x, attn_mask, key_padding_mask, is_causal)
        batch, length, dim = x.shape
        heads = attention.num_heads
        q, k, v = F.linear(x, attention.in_proj_weight, attention.in_proj_bias).view(batch, length, 3, heads, -1).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)  # [B, H, L, L]
        if attn_mask is not None:  # [B * H, L, L] or [L, L]; bool (True = blocked) or additive
            mask = attn_mask.view(batch, heads, length, length) if attn_mask.dim() == 3 else attn_mask
            scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        weights = self.attn_dropout(torch.softmax(scores, dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(batch, length, dim)
        return self.dropout1(attention.out_proj(out))


def _mlp_layers(in_dim: int, hidden: int, out_dim: int, dropout: float) -> list[nn.Module]:
    """A linear map (`hidden=0`) or one GELU hidden layer with dropout."""
    if hidden <= 0:
        return [nn.Linear(in_dim, out_dim)]
    return [nn.Linear(in_dim, hidden), nn.GELU(), FastDropout(dropout), nn.Linear(hidden, out_dim)]


def projection_head(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Module:
    """Projection head over one frozen modality. `hidden=0` gives a linear map (least memorisation)."""
    return nn.Sequential(FastDropout(dropout), *_mlp_layers(in_dim, hidden, out_dim, dropout))


class _Length(nn.Linear):
    """A positive length [..., 1] for a vector, read from features [..., dim]; 1 everywhere at init."""

    def __init__(self, dim: int):
        super().__init__(dim, 1)
        nn.init.zeros_(self.weight)
        nn.init.constant_(self.bias, math.log(math.e - 1.0))  # softplus(b) = 1

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.softplus(super().forward(features))


class ItemTower(nn.Module):
    """Projects each modality's frozen features into a shared space (one head each, built from the
    registry in recsys.model.modalities) and fuses them into one unit vector (of a content-predicted
    length with `model.item_scale`).

    A gate learns, per item, how much to trust each modality (softmax over the modalities that are
    present). Missing modalities are masked out, never zero-filled in.
    """

    def __init__(self, cfg: ModelConfig, heads: dict[str, nn.Module], n_id_items: int = 0):
        super().__init__()
        if not heads:
            raise ValueError("ItemTower needs at least one modality head")
        self.dim = cfg.dim
        self.heads = nn.ModuleDict(heads)
        self.gate = nn.Linear(cfg.dim * len(heads), len(heads))
        # Used when an item has no content at all, so its vector is still defined.
        self.missing = nn.Parameter(torch.randn(cfg.dim) * 0.02)
        # Score = (user . item + bias) / temperature. The vectors are unit length, so without a bias
        # the model has no room to say "most users like this"; predicting it from content lets a
        # cold item carry a popularity prior too. A length (item_scale) says how sharply the item's
        # score follows the user's taste, as item norms do in a factor model; also from content.
        self.scale = _Length(cfg.dim) if cfg.item_scale else None
        self.bias = nn.Linear(cfg.dim, 1)
        nn.init.zeros_(self.bias.weight)
        nn.init.zeros_(self.bias.bias)
        # Identity residual (row 0 = unknown item, always zero): lets warm items move away from what
        # their content alone predicts, as an ID model would. Zero-initialised, and dropped at random
        # while training, so a new item (residual 0) is scored by a content path trained to stand alone.
        self.id_dropout = cfg.item_id_dropout
        self.id_embedding = nn.Embedding(n_id_items + 1, cfg.dim, padding_idx=0) if cfg.item_id_embedding and n_id_items else None
        if self.id_embedding is not None:
            nn.init.zeros_(self.id_embedding.weight)
        self._register_load_state_dict_pre_hook(_rename_old_heads)

    @property
    def modalities(self) -> list[str]:
        return list(self.heads)

    def forward(self, values: dict[str, torch.Tensor], present: dict[str, torch.Tensor], id_index: torch.Tensor | None = None) -> torch.Tensor:
        """Item vectors; arguments as for `encode`."""
        return self.encode(values, present, id_index)[0]

    def encode(
        self, values: dict[str, torch.Tensor], present: dict[str, torch.Tensor], id_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(item vectors [..., dim], scalar biases [...]) from each modality's features [..., width] and
        presence [...] (bool). `id_index`: identity rows (0 = unknown). The vectors are unit length unless
        `model.item_scale` gives each its own."""
        stacked = torch.stack([head(values[name]) for name, head in self.heads.items()], dim=-2)  # [..., M, dim]
        mask = torch.stack([present[name] for name in self.heads], dim=-1).to(stacked.dtype)  # [..., M]
        stacked = stacked * mask.unsqueeze(-1)  # a missing modality must not steer the gate
        logits = self.gate(stacked.flatten(-2)).masked_fill(mask == 0, float("-inf"))
        weights = torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0)
        fused = (weights.unsqueeze(-1) * stacked).sum(dim=-2)
        has_any = mask.sum(dim=-1, keepdim=True) > 0
        fused = torch.where(has_any, fused, self.missing.expand_as(fused))
        if self.id_embedding is not None and id_index is not None:
            residual = self.id_embedding(id_index)
            if self.training and self.id_dropout > 0:
                keep = torch.rand(residual.shape[:-1] + (1,), device=residual.device) >= self.id_dropout
                residual = residual * keep
            fused = fused + residual
        vector = F.normalize(fused, dim=-1)
        bias = self.bias(fused).squeeze(-1)
        if self.scale is not None:
            vector = vector * self.scale(fused)
        return vector, bias


_OLD_HEADS = {"text_head.": "heads.text.", "image_head.": "heads.image.", "category_head.": "heads.categories."}


def _rename_old_heads(state_dict, prefix, *args) -> None:
    """Bundles saved before the modality registry name the heads text_head, image_head, category_head."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        for old, new in _OLD_HEADS.items():
            if key.startswith(prefix + old):
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)


class UserTower(nn.Module):
    """Encodes a user from the item vectors of their history (oldest first, left-padded).

    "attention": causal self-attention (SASRec-style) so one forward pass yields a user vector after
    every prefix, which lets training use every position at once. "mean": causal running mean.
    A user is their history alone (no user id), so a known user and an anonymous session with the same
    history get the same vector.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pooling = cfg.user_pooling
        self.max_history = cfg.max_history
        dim = cfg.dim
        self.position = nn.Embedding(cfg.max_history, dim)
        nn.init.normal_(self.position.weight, std=0.02)
        self.input_scale = dim**0.5  # unit item vectors -> unit-variance components, like token embeddings
        self.input_norm = nn.LayerNorm(dim)
        self.dropout = FastDropout(cfg.attn_dropout)
        if cfg.user_pooling == "attention":
            layer = _EncoderLayer(
                d_model=dim,
                nhead=cfg.n_heads,
                dim_feedforward=dim * 2,
                dropout=cfg.attn_dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            self.encoder = nn.TransformerEncoder(layer, num_layers=cfg.n_layers, enable_nested_tensor=False)
        else:
            self.encoder = None
        self.output = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        self.scale = _Length(dim) if cfg.user_scale else None
        self.n_heads = cfg.n_heads
        self.register_buffer("_eye", torch.eye(cfg.max_history, dtype=torch.bool), persistent=False)
        self.register_buffer(
            "_causal", torch.triu(torch.ones(cfg.max_history, cfg.max_history, dtype=torch.bool), diagonal=1), persistent=False
        )

    def forward(self, history: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """history: [B, L, dim] item vectors; valid: [B, L] bool. Returns [B, L, dim] user vectors (unit,
        or of a learned length with model.user_scale), the user's state after each position (rows at
        padded positions are meaningless)."""
        length = history.shape[1]
        if length > self.max_history:
            raise ValueError(f"history length {length} exceeds model.max_history={self.max_history}")
        positions = torch.arange(self.max_history - length, self.max_history, device=history.device)
        x = history * valid.unsqueeze(-1)
        if self.encoder is not None:
            x = self.dropout(self.input_norm(x * self.input_scale + self.position(positions)))
            # Position t attends to valid positions <= t, and always to itself, so no attention row is
            # empty (an empty row gives NaN, and NaN gradients, even where the output is discarded).
            blocked = self._causal[:length, :length].unsqueeze(0) | ~valid.unsqueeze(1)
            blocked = blocked & ~self._eye[:length, :length].unsqueeze(0)
            blocked = blocked.repeat_interleave(self.n_heads, dim=0)
            x = self.encoder(x, mask=blocked)
        else:
            counts = valid.cumsum(dim=1).clamp(min=1).unsqueeze(-1).to(x.dtype)
            x = x.cumsum(dim=1) / counts
        return self._state(x)

    def _state(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled history [B, L, dim] -> unit user vectors (of a learned length with model.user_scale)."""
        unit = F.normalize(self.output(pooled), dim=-1)
        return unit if self.scale is None else unit * self.scale(pooled)

    def leave_one_out(self, history: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """[B, L, dim] user vectors: at each position, the state from every *other* valid item of the row,
        read as a set. Trains the mean tower for unordered logs exactly as it is used: a user vector is
        the mean of all the user's items, and the held-out item is any one of them. A mean of the
        others is one subtraction per position, so every item of the row is a target at once."""
        if self.pooling != "mean":
            raise ValueError("leave_one_out needs model.user_pooling=mean")
        x = history * valid.unsqueeze(-1)
        # A position outside `valid` (padding, or an item hidden while training) is in no one's mean, its own included.
        counts = (valid.sum(dim=1, keepdim=True) - valid.long()).clamp(min=1).unsqueeze(-1).to(x.dtype)
        others = (x.sum(dim=1, keepdim=True) - x) / counts
        return self._state(others)

    def encode_last(self, history: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The user vector after the whole (left-padded) history: [B, dim]."""
        return self.forward(history, valid)[:, -1]
