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
import torch.nn.functional as F
from torch import nn

from recsys.config import ModelConfig
from recsys.encoders.features import ItemFeatures
from recsys.model.item_item import block_user_vectors, predict_content_rows
from recsys.model.modalities import MODALITIES, used_modalities
from recsys.model.towers import ItemTower, UserTower

CONTENT_MAP_MODALITIES = ("text", "categories")  # what the item-item block's content map reads (ItemItemBlend)


@dataclass
class FeatureTensors:
    """Frozen item features as tensors, aligned with the catalog's row order (item index): per modality
    (recsys.model.modalities) its values [n, width] and which items have it [n]."""

    values: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    n: int
    id_index: torch.Tensor | None = None  # identity rows of a hybrid model (0 = unknown); see TwoTowerModel.feature_tensors

    @classmethod
    def from_features(cls, features: ItemFeatures) -> "FeatureTensors":
        values, present = {}, {}
        for name, modality in MODALITIES.items():
            array = modality.values(features)
            if array is not None:
                values[name] = torch.as_tensor(np.asarray(array), dtype=torch.float32)
                present[name] = torch.as_tensor(np.asarray(modality.present(features), dtype=bool))
        return cls(values, present, len(features.item_ids))

    def rows(self, index: torch.Tensor) -> "FeatureTensors":
        n = int(index.sum()) if index.dtype == torch.bool else len(index)
        return FeatureTensors(
            {k: v[index] for k, v in self.values.items()}, {k: v[index] for k, v in self.present.items()}, n,
            None if self.id_index is None else self.id_index[index],
        )

    def to(self, device: torch.device | str) -> "FeatureTensors":
        return FeatureTensors(
            {k: v.to(device) for k, v in self.values.items()}, {k: v.to(device) for k, v in self.present.items()}, self.n,
            None if self.id_index is None else self.id_index.to(device),
        )


class RetrievalModel(nn.Module):
    """The one contract of everything that scores items: item vectors and biases from content features,
    user vectors from histories of item vectors; score = user . item + bias. Training, evaluation,
    bundles, the index and serving read a model through it alone, so the towers, an ensemble of them and
    the towers wrapped with the item-item block are interchangeable (each is fit by its own
    `recsys.model.fitting` component)."""

    dim: int
    item_id_vocab: list[str]  # items with an identity residual (hybrid model), else []
    widths: dict[str, int | None]  # each modality's feature width (None: not in the features)

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
        self, item_vectors: np.ndarray | torch.Tensor, histories: list[np.ndarray], batch_size: int = 1024
    ) -> np.ndarray:
        """User vectors from histories of item indices (oldest first), for these item vectors. A
        `Histories` may carry timestamps, for a model that weighs items by age (ItemItemBlend); the
        towers read the order alone."""
        raise NotImplementedError

    def similarity_queries(self, item_vectors: np.ndarray) -> np.ndarray:
        """Query vectors for item-to-item similarity from item vectors [n, dim] (an inner product
        with the index rows ranks the catalog by similarity). For the towers it is the item vector."""
        return np.asarray(item_vectors, dtype=np.float32)

    def item_vectors(self, features: FeatureTensors) -> torch.Tensor:
        return self.item_vectors_and_bias(features)[0]

    @torch.inference_mode()
    def encode_items_with_bias(self, features: FeatureTensors, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """(item vectors [n, dim], biases [n]) for every row of `features` (eval mode, no grad)."""
        if self.training:
            self.eval()
        n = features.n
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
        widths: dict[str, int | None],
        item_id_vocab: Sequence | None = None,
    ):
        """`widths`: each modality's feature width (`feature_widths`); the tower reads those in
        model.modalities. `item_id_vocab`: the item ids seen in training, which get an identity residual
        when `cfg.item_id_embedding` is on (ignored otherwise)."""
        super().__init__()
        self.cfg = cfg
        self.widths = {name: widths.get(name) for name in MODALITIES} | dict(widths)
        self.item_id_vocab = [str(i) for i in item_id_vocab] if cfg.item_id_embedding and item_id_vocab is not None else []
        self._id_row = {item: row + 1 for row, item in enumerate(self.item_id_vocab)}
        heads = {name: MODALITIES[name].head(self.widths[name], cfg) for name in used_modalities(cfg, self.widths)}
        self.item_tower = ItemTower(cfg, heads, n_id_items=len(self.item_id_vocab))
        self.user_tower = UserTower(cfg)

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def shape_info(self) -> dict:
        return {"dim": self.cfg.dim, "widths": dict(self.widths), "n_id_items": len(self.item_id_vocab)}

    def feature_tensors(self, features: ItemFeatures) -> FeatureTensors:
        """Tensors of `features` for this model: adds the identity rows of a hybrid model, so an id
        seen in training finds its residual and any other id (a new item) gets none."""
        tensors = FeatureTensors.from_features(features)
        if self._id_row:
            tensors.id_index = identity_rows(self._id_row, features.item_ids)
        return tensors

    def item_vectors_and_bias(
        self, features: FeatureTensors, use_identity: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`use_identity=False` gives the content-only vectors, what a new item gets."""
        return self.item_tower.encode(features.values, features.present, features.id_index if use_identity else None)

    @torch.inference_mode()
    def encode_histories(
        self, item_vectors: np.ndarray | torch.Tensor, histories: list[np.ndarray], batch_size: int = 1024
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
            results.append(self.user_tower.encode_last(seq, torch.as_tensor(valid)).numpy())
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
        self.widths = first.widths
        self.item_id_vocab = first.item_id_vocab
        self._scale = 1.0 / math.sqrt(len(members))

    @property
    def dim(self) -> int:
        return len(self.members) * self.cfg.dim

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
        self, item_vectors: np.ndarray | torch.Tensor, histories: list[np.ndarray], batch_size: int = 1024
    ) -> np.ndarray:
        """Each member reads its own slice of the ensemble's item vectors (unscaled back). Only the
        rows the histories use are unscaled: a single request must not copy the whole catalog."""
        recent = [np.asarray(h, dtype=np.int64)[-self.cfg.max_history :] for h in histories]
        used, local = np.unique(np.concatenate(recent) if recent else np.zeros(0, np.int64), return_inverse=True)
        local_histories = np.split(local, np.cumsum([len(h) for h in recent])[:-1]) if recent else []
        vectors = torch.as_tensor(item_vectors)[torch.as_tensor(used)] / self._scale
        d = self.cfg.dim
        users = [
            member.encode_histories(vectors[:, k * d : (k + 1) * d].contiguous(), local_histories, batch_size)
            for k, member in enumerate(self.members)
        ]
        return (np.concatenate(users, axis=1) * self._scale).astype(np.float32)


class ItemItemBlend(RetrievalModel):
    """A two-tower model (or ensemble) plus a closed-form item-item block for the items seen in training
    (`model.item_item`; the math is in recsys.model.item_item).

    score_i = base score_i + weight * (sum_j decay^age_j P_j) . Q_i, with P_j = s_j Q_j. It is served as
    one inner product: item vectors [v_i, Q_i, s_i], user vectors [u, weight * sum_j decay^age_j s_j Q_j, 0].
    User vectors therefore still come from histories of item vectors alone (the index, bundles and the
    API are unchanged). An item without a block row (a new item) has s = 0, so it adds nothing to a
    history, and Q = 0 (scored by the towers exactly as without the block) or, with
    `model.item_item_new_items=content`, Q predicted from its content: [k(x, anchors), 1] @ map, with a
    kernel k to the known items' content (the anchors; recsys.model.item_item.ContentKernel), or
    [text, categories, 1] @ map for a linear map (sharpness 0; bundles saved before the kernel map).
    """

    def __init__(self, base: RetrievalModel, item_id_vocab: Sequence, rank: int):
        super().__init__()
        vocab = [str(i) for i in item_id_vocab]
        if base.item_id_vocab and base.item_id_vocab != vocab:
            raise ValueError("the item-item block and the hybrid towers must share one identity vocabulary")
        if rank < 1:
            raise ValueError(f"model.item_item_rank must be >= 1, got {rank}")
        self.base = base
        self.cfg = base.cfg
        self.widths = base.widths
        self.item_id_vocab = vocab
        self._row = {item: row + 1 for row, item in enumerate(vocab)}
        self.rank = rank
        # Row 0 (unknown item) stays zero. Buffers, not parameters: fit in closed form, saved with the weights.
        self.register_buffer("block_vectors", torch.zeros(len(vocab) + 1, rank))
        self.register_buffer("block_scale", torch.zeros(len(vocab) + 1))
        self.register_buffer("block_weight", torch.zeros(()))
        self.register_buffer("block_decay", torch.ones(()))
        # A popularity prior: weight * log(1 + training count) added to each known item's bias.
        self.register_buffer("block_popularity", torch.zeros(len(vocab) + 1))
        # 1: the content map reads each modality's features scaled to unit length (0: as they are).
        self.register_buffer("block_content_unit", torch.zeros(()))
        self.register_load_state_dict_pre_hook(_bundles_before_the_prior)
        self.predicts_new_items = self.cfg.item_item_new_items == "content"
        if self.predicts_new_items:
            design_dim = sum(self.widths.get(name) or 0 for name in CONTENT_MAP_MODALITIES) + 1
            self.register_buffer("block_content_map", torch.zeros(design_dim, rank))
            # A kernel map's sharpness and its anchors (the known items' content rows); none: a linear map.
            self.register_buffer("block_content_sharpness", torch.zeros(()))
            self.register_buffer("block_content_anchors", torch.zeros(0, design_dim - 1))

    @property
    def content_parts(self) -> int:
        """The modalities the content map reads (its kernel's similarity is their mean cosine)."""
        return sum(1 for name in CONTENT_MAP_MODALITIES if self.widths.get(name))

    def set_block(
        self, vectors: np.ndarray, scale: np.ndarray, weight: float, decay: float, content_map: np.ndarray | None = None,
        content_unit: bool = False, content_sharpness: float = 0.0, content_anchors: np.ndarray | None = None,
    ) -> None:
        """Install the block: `vectors` [len(vocab), rank] (Q) and `scale` [len(vocab)] (s), vocabulary order;
        `content_map` (model.item_item_new_items=content) predicts Q for new items: [design dim, rank] for a
        linear map, [len(content_anchors) + 1, rank] for a kernel map of `content_sharpness` > 0."""
        n = len(self.item_id_vocab)
        if vectors.shape != (n, self.rank) or scale.shape != (n,):
            raise ValueError(f"block shapes {vectors.shape}, {scale.shape} != ({n}, {self.rank}), ({n},)")
        if (content_map is not None) != self.predicts_new_items:
            raise ValueError("a content map is given exactly when model.item_item_new_items=content")
        self.block_vectors[1:] = torch.as_tensor(vectors, dtype=torch.float32)
        self.block_scale[1:] = torch.as_tensor(scale, dtype=torch.float32)
        self.block_weight.fill_(float(weight))
        self.block_decay.fill_(float(decay))
        self.block_content_unit.fill_(float(content_unit))
        if content_map is not None:
            design_dim = self.block_content_anchors.shape[1] + 1
            anchors = np.zeros((0, design_dim - 1)) if content_sharpness == 0.0 else np.asarray(content_anchors)
            if content_sharpness > 0.0 and (content_anchors is None or anchors.ndim != 2 or anchors.shape[1] != design_dim - 1):
                raise ValueError(f"a kernel content map needs anchors [n, {design_dim - 1}], got "
                                 f"{None if content_anchors is None else anchors.shape}")
            rows = design_dim if content_sharpness == 0.0 else len(anchors) + 1
            if tuple(content_map.shape) != (rows, self.rank):
                raise ValueError(f"content map shape {content_map.shape} != ({rows}, {self.rank})")
            self.block_content_map = torch.as_tensor(content_map, dtype=torch.float32).clone()
            self.block_content_anchors = torch.as_tensor(anchors, dtype=torch.float32).clone()
            self.block_content_sharpness.fill_(float(content_sharpness))

    def set_popularity_prior(self, prior: np.ndarray) -> None:
        """`prior` [len(vocab)]: each known item's added bias (vocabulary order)."""
        if prior.shape != (len(self.item_id_vocab),):
            raise ValueError(f"popularity prior shape {prior.shape} != ({len(self.item_id_vocab)},)")
        self.block_popularity[1:] = torch.as_tensor(prior, dtype=torch.float32)

    def content_design(self, features: FeatureTensors, unit: bool | None = None) -> torch.Tensor:
        """[n, text width + categories + 1]: what the content map reads (zeros where an item lacks a
        modality); `unit` (default: the installed block's choice) scales each modality's part to unit
        length, so an item with many categories does not outweigh its text. Posters are left out: they hurt
        new items in the towers (docs/results.md), and the map was not tried with them."""
        unit = bool(self.block_content_unit) if unit is None else unit
        device = features.id_index.device if features.id_index is not None else None
        parts = []
        for name in CONTENT_MAP_MODALITIES:
            width = self.widths.get(name)
            if not width:
                continue
            values = features.values.get(name)
            if values is None:
                parts.append(torch.zeros(features.n, width, device=device))
            else:
                part = values.float() * features.present[name].unsqueeze(-1).float()
                parts.append(F.normalize(part, dim=1) if unit else part)
        parts.append(torch.ones(features.n, 1, device=parts[0].device if parts else device))
        return torch.cat(parts, dim=1)

    def content_rows(self, design: torch.Tensor) -> torch.Tensor:
        """The block's item side the content map predicts for the rows of `design` (`content_design`):
        recsys.model.item_item.predict_content_rows, the function the block search scored it with."""
        anchors = self.block_content_anchors.cpu().numpy() if len(self.block_content_anchors) else None
        rows = predict_content_rows(design.detach().cpu().numpy(), self.block_content_map.cpu().numpy(), anchors,
                                    float(self.block_content_sharpness), self.content_parts)
        return torch.as_tensor(rows, dtype=design.dtype, device=design.device)

    @property
    def dim(self) -> int:
        return self.base.dim + self.rank + 1

    def shape_info(self) -> dict:
        return {**self.base.shape_info(), "dim": self.dim, "n_id_items": len(self.item_id_vocab), "item_item_rank": self.rank}

    def feature_tensors(self, features: ItemFeatures) -> FeatureTensors:
        tensors = self.base.feature_tensors(features)
        if tensors.id_index is None and self._row:
            tensors.id_index = identity_rows(self._row, features.item_ids)
        return tensors

    def item_vectors_and_bias(
        self, features: FeatureTensors, use_identity: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`use_identity=False`: the content-only vectors, what a new item gets (no block row: the towers'
        vector plus, with model.item_item_new_items=content, the block's item side predicted from content)."""
        vectors, bias = self.base.item_vectors_and_bias(features, use_identity)
        rows = features.id_index if use_identity and features.id_index is not None else None
        if rows is None:
            rows = torch.zeros(vectors.shape[0], dtype=torch.long, device=vectors.device)
        item_side = self.block_vectors[rows]
        new = rows == 0
        if self.predicts_new_items and bool(new.any()):
            item_side = item_side.clone()
            item_side[new] = self.content_rows(self.content_design(features.rows(new)))
        block = torch.cat([item_side, self.block_scale[rows].unsqueeze(-1)], dim=-1)
        return torch.cat([vectors, block.to(vectors.dtype)], dim=-1), bias + self.block_popularity[rows].to(bias.dtype)

    @torch.inference_mode()
    def encode_histories(
        self, item_vectors: np.ndarray | torch.Tensor, histories: list[np.ndarray], batch_size: int = 1024
    ) -> np.ndarray:
        """The towers read their slice of the item vectors; the block sums s_j Q_j over the whole
        history with recency weights decay^age (ages from the histories' timestamps where they carry them)."""
        vectors = item_vectors.numpy() if isinstance(item_vectors, torch.Tensor) else np.asarray(item_vectors)
        d = self.base.dim
        users = self.base.encode_histories(vectors[:, :d], histories, batch_size)
        inputs = _RowProduct(vectors, d, self.rank)
        block = block_user_vectors(histories, inputs, float(self.block_decay), batch_size)
        block *= float(self.block_weight)
        return np.concatenate([users, block, np.zeros((len(histories), 1), np.float32)], axis=1).astype(np.float32)

    def similarity_queries(self, item_vectors: np.ndarray) -> np.ndarray:
        """The towers' part as the base model has it, and the block's user side for a history of this
        one item (weight * s_i Q_i, the block's score of what follows item i); the s column gets 0."""
        vectors = np.asarray(item_vectors, dtype=np.float32)
        d = self.base.dim
        towers = self.base.similarity_queries(vectors[:, :d])
        block = _RowProduct(vectors, d, self.rank)[np.arange(len(vectors))] * float(self.block_weight)
        return np.concatenate([towers, block, np.zeros((len(vectors), 1), np.float32)], axis=1).astype(np.float32)


class ContentKNNBlend(RetrievalModel):
    """A model plus content-kNN (model.content_knn): score_i = base score_i + weight * cos(mean of the
    history's content rows, item i's content row), where an item's content row is its unit frozen text and
    image embeddings concatenated and re-normalised (recsys.eval.baselines.ContentKNNScorer's rows).

    Served as one inner product: item vectors [v_i, c_i], user vectors [u, weight * unit(mean_j c_j)], so
    the index, bundles and the API are unchanged. It is there for catalogs where the trained model does not
    beat its own frozen embeddings (a few dozen items): the recipe adds it only when it wins on held-out
    validation users, or with a floor weight when the model is below content-kNN (then content-kNN ranks).
    New items have content rows, so it reaches them too."""

    MODALITIES = ("text", "image")  # the frozen embeddings content-kNN reads (frozen_content_embeddings)

    def __init__(self, base: RetrievalModel):
        super().__init__()
        self.base = base
        self.cfg = base.cfg
        self.widths = base.widths
        self.item_id_vocab = base.item_id_vocab
        self.content_names = tuple(name for name in self.MODALITIES if self.widths.get(name))
        if not self.content_names:
            raise ValueError("model.content_knn needs frozen text or image features")
        self.content_width = sum(self.widths[name] for name in self.content_names)
        self.register_buffer("content_weight", torch.zeros(()))

    def set_weight(self, weight: float) -> None:
        self.content_weight.fill_(float(weight))

    @property
    def dim(self) -> int:
        return self.base.dim + self.content_width

    def shape_info(self) -> dict:
        return {**self.base.shape_info(), "dim": self.dim, "content_knn_width": self.content_width}

    def feature_tensors(self, features: ItemFeatures) -> FeatureTensors:
        return self.base.feature_tensors(features)

    def content_rows(self, features: FeatureTensors) -> torch.Tensor:
        """[n, content width]: each modality's embedding at unit length (zeros where an item lacks it), the
        concatenation re-normalised."""
        parts = [F.normalize(features.values[name].float() * features.present[name].unsqueeze(-1).float(), dim=1)
                 if name in features.values else torch.zeros(features.n, self.widths[name])
                 for name in self.content_names]
        return F.normalize(torch.cat(parts, dim=1), dim=1)

    def item_vectors_and_bias(
        self, features: FeatureTensors, use_identity: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        vectors, bias = self.base.item_vectors_and_bias(features, use_identity)
        return torch.cat([vectors, self.content_rows(features).to(vectors.dtype)], dim=-1), bias

    @torch.inference_mode()
    def encode_histories(
        self, item_vectors: np.ndarray | torch.Tensor, histories: list[np.ndarray], batch_size: int = 1024
    ) -> np.ndarray:
        """The base model reads its slice; the content part is the unit mean of the whole history's
        content rows (zeros for an empty history), times the weight."""
        vectors = item_vectors.numpy() if isinstance(item_vectors, torch.Tensor) else np.asarray(item_vectors)
        d = self.base.dim
        users = self.base.encode_histories(vectors[:, :d], histories, batch_size)
        content = np.zeros((len(histories), self.content_width), np.float32)
        for u, history in enumerate(histories):
            rows = np.asarray(history, dtype=np.int64)
            if len(rows):
                content[u] = vectors[rows, d:].mean(axis=0)
        norms = np.linalg.norm(content, axis=1, keepdims=True)
        content *= float(self.content_weight) / np.where(norms > 0, norms, 1.0)
        return np.concatenate([users, content], axis=1).astype(np.float32)

    def similarity_queries(self, item_vectors: np.ndarray) -> np.ndarray:
        """The base model's queries, and the item's own content row times the weight."""
        vectors = np.asarray(item_vectors, dtype=np.float32)
        d = self.base.dim
        queries = self.base.similarity_queries(vectors[:, :d])
        return np.concatenate([queries, vectors[:, d:] * float(self.content_weight)], axis=1).astype(np.float32)


def _bundles_before_the_prior(module, state_dict, prefix, *args) -> None:
    """A bundle saved before the popularity prior, the content scaling and the kernel content map existed
    loads with none of them (a linear map); a kernel map's buffers take the saved shapes."""
    if prefix + "block_scale" not in state_dict:
        return
    state_dict.setdefault(prefix + "block_popularity", torch.zeros_like(state_dict[prefix + "block_scale"]))
    state_dict.setdefault(prefix + "block_content_unit", torch.zeros(()))
    if not getattr(module, "predicts_new_items", False) or prefix + "block_content_map" not in state_dict:
        return
    state_dict.setdefault(prefix + "block_content_sharpness", torch.zeros(()))
    state_dict.setdefault(prefix + "block_content_anchors", torch.zeros(0, module.block_content_anchors.shape[1]))
    module.block_content_map = torch.zeros_like(state_dict[prefix + "block_content_map"])
    module.block_content_anchors = torch.zeros_like(state_dict[prefix + "block_content_anchors"])


class _RowProduct:
    """Rows of s_j Q_j computed on demand from item vectors [.., Q_j, s_j], so a request touches only
    the rows of its history, not the whole catalog."""

    def __init__(self, vectors: np.ndarray, start: int, rank: int):
        self.vectors, self.start, self.rank = vectors, start, rank
        self.shape = (vectors.shape[0], rank)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        picked = self.vectors[rows]
        return picked[:, self.start : self.start + self.rank] * picked[:, self.start + self.rank : self.start + self.rank + 1]


def build_model(
    cfg: ModelConfig,
    widths: dict[str, int | None],
    item_id_vocab: Sequence | None = None,
) -> RetrievalModel:
    """One two-tower model, or `cfg.ensemble_size` of the same shape (weights from the torch RNG state),
    wrapped with an item-item block over `item_id_vocab` when `cfg.item_item` is set, and that with
    content-kNN when `cfg.content_knn` is."""
    members = [
        TwoTowerModel(cfg, widths, item_id_vocab) for _ in range(cfg.ensemble_size)
    ]
    model = members[0] if len(members) == 1 else TwoTowerEnsemble(members)
    if cfg.item_item != "none":
        model = ItemItemBlend(model, item_id_vocab if item_id_vocab is not None else [], cfg.item_item_rank)
    return ContentKNNBlend(model) if cfg.content_knn else model


class ModelScorer:
    """A model as an evaluation `Scorer` (recsys.eval.protocol): every catalog item scored for a batch
    of histories, through the same code that serves it. Validation and test both score through it."""

    name = "recsys"

    def __init__(self, model: RetrievalModel, features: FeatureTensors):
        self.model = model
        self.item_vectors, self.item_bias = model.encode_items_with_bias(features)

    def score(self, histories: list[np.ndarray], user_ids: np.ndarray | None = None) -> np.ndarray:
        return self.model.encode_histories(self.item_vectors, histories) @ self.item_vectors.T + self.item_bias


def identity_rows(row_of: dict, item_ids) -> torch.Tensor:
    """Each item's identity row (ids as strings; 0 = an id the model never saw: a new item)."""
    return torch.as_tensor([row_of.get(str(item), 0) for item in np.asarray(item_ids).tolist()], dtype=torch.long)


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
