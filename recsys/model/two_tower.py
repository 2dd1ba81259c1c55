"""`TwoTowerModel`: both towers plus the inference helpers that serving and batch jobs share.

Kept free of Lightning so a bundle loads with plain torch, and so training and serving compute
item and user vectors with exactly the same code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from recsys.config import ModelConfig
from recsys.encoders.features import ItemFeatures
from recsys.model.towers import ItemTower, UserTower


@dataclass
class FeatureTensors:
    """Frozen item features as tensors, aligned with the catalog's row order (item index)."""

    text: torch.Tensor | None
    text_mask: torch.Tensor | None
    image: torch.Tensor | None
    image_mask: torch.Tensor | None
    categories: torch.Tensor
    id_index: torch.Tensor | None = None  # identity rows of a hybrid model (0 = unknown); see TwoTowerModel.feature_tensors

    @classmethod
    def from_features(cls, features: ItemFeatures) -> "FeatureTensors":
        def tensor(array, dtype=torch.float32):
            return None if array is None else torch.as_tensor(np.asarray(array), dtype=dtype)

        n = len(features.item_ids)
        categories = features.categories if features.categories is not None else np.zeros((n, 0), np.float32)
        return cls(
            text=tensor(features.text),
            text_mask=tensor(features.text_mask, torch.bool),
            image=tensor(features.image),
            image_mask=tensor(features.image_mask, torch.bool),
            categories=tensor(categories),
        )

    def rows(self, index: torch.Tensor) -> "FeatureTensors":
        def pick(t):
            return None if t is None else t[index]

        return FeatureTensors(
            pick(self.text), pick(self.text_mask), pick(self.image), pick(self.image_mask), self.categories[index],
            pick(self.id_index),
        )

    def to(self, device: torch.device | str) -> "FeatureTensors":
        def move(t):
            return None if t is None else t.to(device)

        return FeatureTensors(
            move(self.text), move(self.text_mask), move(self.image), move(self.image_mask), self.categories.to(device),
            move(self.id_index),
        )


class RetrievalModel(nn.Module):
    """What training, evaluation, bundles and serving need from a model: item vectors and biases from
    content features, user vectors from histories of item vectors; score = user . item + bias."""

    dim: int
    item_id_vocab: list[str]  # items with an identity residual (hybrid model), else []
    text_dim: int | None
    image_dim: int | None
    n_categories: int

    @property
    def has_text_head(self) -> bool:
        """Whether free text can be projected into the item space (text search)."""
        raise NotImplementedError

    def shape_info(self) -> dict:
        """What a bundle records to rebuild the model before loading its weights."""
        raise NotImplementedError

    def feature_tensors(self, features: ItemFeatures) -> FeatureTensors:
        raise NotImplementedError

    def item_vectors_and_bias(
        self, features: FeatureTensors, use_identity: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`use_identity=False` gives the content-only vectors, what a new item gets."""
        raise NotImplementedError

    def encode_histories(
        self,
        item_vectors: np.ndarray | torch.Tensor,
        histories: list[np.ndarray],
        user_index: np.ndarray | None = None,
        batch_size: int = 1024,
    ) -> np.ndarray:
        """User vectors from histories of item indices (oldest first), for these item vectors."""
        raise NotImplementedError

    def item_vectors(self, features: FeatureTensors) -> torch.Tensor:
        return self.item_vectors_and_bias(features)[0]

    @torch.inference_mode()
    def encode_items_with_bias(self, features: FeatureTensors, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """(item vectors [n, dim], biases [n]) for every row of `features` (eval mode, no grad)."""
        if self.training:
            self.eval()
        n = features.categories.shape[0]
        vectors, biases = [], []
        for start in range(0, n, batch_size):
            v, b = self.item_vectors_and_bias(features.rows(torch.arange(start, min(start + batch_size, n))))
            vectors.append(v.numpy())
            biases.append(b.numpy())
        if not vectors:
            return np.zeros((0, self.dim), np.float32), np.zeros(0, np.float32)
        return np.concatenate(vectors).astype(np.float32), np.concatenate(biases).astype(np.float32)

    def encode_items(self, features: FeatureTensors, batch_size: int = 8192) -> np.ndarray:
        """Item vectors for every row of `features` (eval mode, no grad)."""
        return self.encode_items_with_bias(features, batch_size)[0]


class TwoTowerModel(RetrievalModel):
    """Item tower over frozen content features + user tower over histories of item vectors."""

    def __init__(
        self,
        cfg: ModelConfig,
        text_dim: int | None,
        image_dim: int | None,
        n_categories: int,
        n_users: int = 0,
        item_id_vocab: Sequence | None = None,
    ):
        """`item_id_vocab`: the item ids seen in training, which get an identity residual when
        `cfg.item_id_embedding` is on (ignored otherwise)."""
        super().__init__()
        self.cfg = cfg
        self.text_dim = text_dim
        self.image_dim = image_dim
        self.n_categories = n_categories
        self.n_users = n_users
        self.item_id_vocab = [str(i) for i in item_id_vocab] if cfg.item_id_embedding and item_id_vocab is not None else []
        self._id_row = {item: row + 1 for row, item in enumerate(self.item_id_vocab)}
        self.item_tower = ItemTower(cfg, text_dim, image_dim, n_categories, n_id_items=len(self.item_id_vocab))
        self.user_tower = UserTower(cfg, n_users)

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def shape_info(self) -> dict:
        return {
            "dim": self.cfg.dim,
            "text_dim": self.text_dim,
            "image_dim": self.image_dim,
            "n_categories": self.n_categories,
            "n_users": self.n_users,
            "n_id_items": len(self.item_id_vocab),
        }

    def feature_tensors(self, features: ItemFeatures) -> FeatureTensors:
        """Tensors of `features` for this model: adds the identity rows of a hybrid model, so an id
        seen in training finds its residual and any other id (a new item) gets none."""
        tensors = FeatureTensors.from_features(features)
        if self._id_row:
            rows = [self._id_row.get(str(item), 0) for item in np.asarray(features.item_ids).tolist()]
            tensors.id_index = torch.as_tensor(rows, dtype=torch.long)
        return tensors

    @property
    def has_text_head(self) -> bool:
        return self.item_tower.text_head is not None

    def item_vectors_and_bias(
        self, features: FeatureTensors, use_identity: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`use_identity=False` gives the content-only vectors, what a new item gets."""
        return self.item_tower.encode(
            features.text, features.text_mask, features.image, features.image_mask, features.categories,
            features.id_index if use_identity else None,
        )

    @torch.inference_mode()
    def encode_histories(
        self,
        item_vectors: np.ndarray | torch.Tensor,
        histories: list[np.ndarray],
        user_index: np.ndarray | None = None,
        batch_size: int = 1024,
    ) -> np.ndarray:
        """User vectors from histories of item indices (oldest first); only the last
        `max_history` items are read. An empty history gives the tower's prior vector."""
        if self.training:
            self.eval()
        vectors = torch.as_tensor(item_vectors)
        max_len = self.cfg.max_history
        results = []
        for start in range(0, len(histories), batch_size):
            chunk = histories[start : start + batch_size]
            padded, valid = left_pad([np.asarray(h, dtype=np.int64)[-max_len:] for h in chunk], max_len)
            seq = vectors[torch.as_tensor(padded).clamp(min=0)]
            users = None
            if user_index is not None and self.user_tower.user_embedding is not None:
                users = torch.as_tensor(user_index[start : start + batch_size], dtype=torch.long)
            results.append(self.user_tower.encode_last(seq, torch.as_tensor(valid), users).numpy())
        return np.concatenate(results).astype(np.float32) if results else np.zeros((0, self.dim), np.float32)


class TwoTowerEnsemble(RetrievalModel):
    """Two-tower models trained with different seeds, scored by the mean of their scores.

    mean_k(u_k . v_k + b_k) = [u_1 .. u_K]/sqrt(K) . [v_1 .. v_K]/sqrt(K) + mean_k b_k, so the ensemble
    has the contract of one model with K x dim wide vectors: batch jobs, the faiss index and the API
    serve it unchanged, and new items are still embedded from content alone by every member.
    """

    def __init__(self, members: Sequence[TwoTowerModel]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        first = members[0]
        for k, member in enumerate(members[1:], start=1):
            if member.shape_info() != first.shape_info() or member.item_id_vocab != first.item_id_vocab:
                raise ValueError(f"ensemble member {k} differs in shape or identity vocabulary from member 0")
        self.members = nn.ModuleList(members)
        self.cfg = first.cfg
        self.text_dim, self.image_dim = first.text_dim, first.image_dim
        self.n_categories, self.n_users = first.n_categories, first.n_users
        self.item_id_vocab = first.item_id_vocab
        self._scale = 1.0 / math.sqrt(len(members))

    @property
    def dim(self) -> int:
        return len(self.members) * self.cfg.dim

    @property
    def has_text_head(self) -> bool:
        return self.members[0].has_text_head

    def shape_info(self) -> dict:
        return {**self.members[0].shape_info(), "dim": self.dim, "members": len(self.members)}

    def feature_tensors(self, features: ItemFeatures) -> FeatureTensors:
        return self.members[0].feature_tensors(features)  # members share the identity vocabulary

    def item_vectors_and_bias(
        self, features: FeatureTensors, use_identity: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [member.item_vectors_and_bias(features, use_identity) for member in self.members]
        vectors = torch.cat([v for v, _ in parts], dim=1) * self._scale
        return vectors, torch.stack([b for _, b in parts]).mean(dim=0)

    @torch.inference_mode()
    def encode_histories(
        self,
        item_vectors: np.ndarray | torch.Tensor,
        histories: list[np.ndarray],
        user_index: np.ndarray | None = None,
        batch_size: int = 1024,
    ) -> np.ndarray:
        """Each member reads its own slice of the ensemble's item vectors (unscaled back). Only the
        rows the histories use are unscaled: a single request must not copy the whole catalog."""
        recent = [np.asarray(h, dtype=np.int64)[-self.cfg.max_history :] for h in histories]
        used, local = np.unique(np.concatenate(recent) if recent else np.zeros(0, np.int64), return_inverse=True)
        local_histories = np.split(local, np.cumsum([len(h) for h in recent])[:-1]) if recent else []
        vectors = torch.as_tensor(item_vectors)[torch.as_tensor(used)] / self._scale
        d = self.cfg.dim
        users = [
            member.encode_histories(vectors[:, k * d : (k + 1) * d].contiguous(), local_histories, user_index, batch_size)
            for k, member in enumerate(self.members)
        ]
        return (np.concatenate(users, axis=1) * self._scale).astype(np.float32)


def build_model(
    cfg: ModelConfig,
    text_dim: int | None,
    image_dim: int | None,
    n_categories: int,
    n_users: int = 0,
    item_id_vocab: Sequence | None = None,
) -> RetrievalModel:
    """One two-tower model, or `cfg.ensemble_size` of the same shape (weights from the torch RNG state)."""
    members = [
        TwoTowerModel(cfg, text_dim, image_dim, n_categories, n_users, item_id_vocab) for _ in range(cfg.ensemble_size)
    ]
    return members[0] if len(members) == 1 else TwoTowerEnsemble(members)


def left_pad(sequences: list[np.ndarray], length: int, pad: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Right-align sequences in a [n, length] array (most recent item last); returns (ids, valid)."""
    out = np.full((len(sequences), length), pad, dtype=np.int64)
    for row, seq in enumerate(sequences):
        seq = seq[-length:]
        if len(seq):
            out[row, length - len(seq) :] = seq
    return out, out != pad


def retrieval_items(vectors: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Index rows [v, b], so that an inner product with a query [u, 1] is the model's score u.v + b."""
    return np.ascontiguousarray(np.concatenate([vectors, bias.reshape(-1, 1)], axis=1), dtype=np.float32)


def retrieval_queries(vectors: np.ndarray, with_bias: bool = True) -> np.ndarray:
    """Query rows [u, 1] (user scores, bias counted) or [u, 0] (pure similarity, e.g. item-to-item)."""
    column = np.full((len(vectors), 1), 1.0 if with_bias else 0.0, dtype=np.float32)
    return np.ascontiguousarray(np.concatenate([vectors, column], axis=1), dtype=np.float32)
