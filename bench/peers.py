"""Peer models for the quality benchmark, each wrapped as a `recsys.eval.protocol.Scorer`.

Every peer is fit on a split's *training* interactions only and scores item indices of the same
`item_index` that recsys uses (the catalog order of `ItemFeatures.item_ids`), so `evaluate` treats
all models identically (seen items excluded, candidate restriction, fixed random tie order).

Peers:
  popularity       training interaction counts (recsys.eval.baselines.PopularityScorer)
  als              implicit ALS on the binary user-item matrix; at scoring time the user factors
                   are re-solved from the given history (implicit's `recalculate_user`, exact ALS
                   fold-in), so the history passed by the protocol is used
  bpr              implicit BPR; users are scored with their trained factors (no fold-in exists)
  lightfm_warp     LightFM WARP, identity features only (pure collaborative)
  lightfm_hybrid   LightFM WARP, item features = genres + lowercased title words + an identity
                   feature only for items seen in training (so cold items are scored from content)
  knn_text / knn_image / knn_both
                   content-kNN on the frozen encoders (recsys.eval.baselines.ContentKNNScorer):
                   cosine between the mean history embedding and every item
  ease             EASE (Steck 2019): closed-form item-item weights on the binary training matrix,
                   B = -P / diag(P) with P = (X^T X + l2 I)^-1, diag(B) = 0; scores = history @ B
  ease_content     EASE on the items seen in training, plus a ridge map from item content (frozen
                   text embedding and genre multi-hot, each L2-normalised, and a bias) to EASE
                   columns, which gives new items a predicted column (the attribute-to-factor
                   mapping of Gantner et al. 2010); known items keep their real columns
  sasrec           SASRec-style causal self-attention over the user's last max_len items, learned
                   item ID embeddings tied to the output, full softmax cross-entropy over the
                   catalog at every position of a random window of each training sequence (torch);
                   scored from the given history
  recent_popularity
                   training interactions of the last N days before the latest training timestamp,
                   ties broken by all-time counts; all-time popularity when the log has no time

ID-only models (als, bpr, lightfm_warp, ease, sasrec) cannot score items without training interactions: those
items are scored just below the user's lowest seen-item score, so they rank last and tie among
themselves (the protocol's random tie order decides) - on the cold protocol that is a random ranking.
Users unknown to an ID model (never in training) get all-zero factors (als, bpr, lightfm); ease and
sasrec read only the history given at scoring time.

`implicit` and `lightfm` are optional (the `bench` extra); they are imported when a peer is built.
ease, ease_content, sasrec and recent_popularity need only numpy, scipy, polars and torch.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from recsys.data.histories import histories_by_user
from recsys.encoders.base import l2_normalize
from recsys.encoders.features import ItemFeatures
from recsys.eval.baselines import ContentKNNScorer, PopularityScorer, frozen_content_embeddings
from recsys.model.item_item import GramSpectrum

# --------------------------------------------------------------------------- training data


@dataclass
class PeerData:
    """What a peer may learn from: the training interactions, the item index, and item content."""

    train: pl.DataFrame  # split.train (user_id, item_id, ...)
    item_index: Mapping[Any, int]  # item id -> column, shared with recsys and the protocol
    catalog: pl.DataFrame | None = None  # item_id, title, categories (for lightfm_hybrid)
    features: ItemFeatures | None = None  # frozen encoder features (for knn_*)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_items(self) -> int:
        return len(self.item_index)

    def user_items(self) -> tuple[dict[Any, int], sp.csr_matrix]:
        """(user id -> row, binary CSR [n_train_users, n_items]); repeated pairs count once."""
        if "ui" not in self._cache:
            ids = pl.DataFrame(
                {"item_id": list(self.item_index.keys()), "_col": list(self.item_index.values())},
                schema_overrides={"_col": pl.Int64},
            ).with_columns(pl.col("item_id").cast(self.train.schema["item_id"]))
            pairs = self.train.select("user_id", "item_id").join(ids, on="item_id", how="inner").unique(
                ["user_id", "_col"]
            )
            users = np.sort(pairs["user_id"].unique().to_numpy())
            user_row = {u: r for r, u in enumerate(users.tolist())}
            rows = np.searchsorted(users, pairs["user_id"].to_numpy())
            cols = pairs["_col"].to_numpy()
            mat = sp.csr_matrix(
                (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(users), self.n_items)
            )
            mat.sum_duplicates()
            self._cache["ui"] = (user_row, mat)
        return self._cache["ui"]

    def seen_items(self) -> np.ndarray:
        """Boolean [n_items]: the item has >= 1 training interaction."""
        _, mat = self.user_items()
        return np.asarray(mat.getnnz(axis=0) > 0)


def histories_csr(histories: Sequence[np.ndarray], n_items: int) -> sp.csr_matrix:
    """Binary CSR [len(histories), n_items] of the given item-index histories."""
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if len(histories) else np.zeros(0, np.int64)
    mat = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(histories), n_items))
    mat.data[:] = 1.0  # duplicates were summed: back to binary
    return mat


def _rank_unseen_last(scores: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Items without training data score just below each row's lowest seen-item score."""
    if seen.all() or not seen.any():
        return scores
    floor = scores[:, seen].min(axis=1, keepdims=True) - 1.0
    scores[:, ~seen] = floor
    return scores


# --------------------------------------------------------------------------- scorers


class FactorScorer:
    """Dot product of user and item factors (plus optional item bias) for an ID-based model."""

    def __init__(
        self,
        name: str,
        user_row: Mapping[Any, int],
        user_factors: np.ndarray,
        item_factors: np.ndarray,
        item_bias: np.ndarray | None = None,
        seen: np.ndarray | None = None,
        fold_in: Callable[[sp.csr_matrix], np.ndarray] | None = None,
    ) -> None:
        self.name = name
        self.user_row = dict(user_row)
        self.user_factors = np.asarray(user_factors, dtype=np.float32)
        self.item_factors = np.asarray(item_factors, dtype=np.float32)
        self.item_bias = None if item_bias is None else np.asarray(item_bias, dtype=np.float32)
        self.seen = seen
        self.fold_in = fold_in

    def user_vectors(self, histories: list[np.ndarray], user_ids: np.ndarray) -> np.ndarray:
        if self.fold_in is not None:
            return np.asarray(self.fold_in(histories_csr(histories, self.item_factors.shape[0])), dtype=np.float32)
        out = np.zeros((len(histories), self.user_factors.shape[1]), dtype=np.float32)
        for i, user in enumerate(np.asarray(user_ids).tolist()):
            row = self.user_row.get(user)
            if row is not None:
                out[i] = self.user_factors[row]
        return out

    def score(self, histories: list[np.ndarray], user_ids: np.ndarray) -> np.ndarray:
        scores = self.user_vectors(histories, user_ids) @ self.item_factors.T
        if self.item_bias is not None:
            scores += self.item_bias[None, :]
        if self.seen is not None:
            scores = _rank_unseen_last(scores, self.seen)
        return scores


class ItemItemScorer:
    """score(user, item) = sum over the user's known history items i of weights[i, item] (EASE).

    `known`: the catalog rows of the weight matrix's rows (items seen in training); history items
    outside it contribute nothing. `seen`: when given, items outside it rank last (`_rank_unseen_last`).
    """

    def __init__(self, name: str, known: np.ndarray, weights: np.ndarray, seen: np.ndarray | None = None) -> None:
        self.name = name
        self.known = np.asarray(known, dtype=np.int64)
        self.weights = np.asarray(weights, dtype=np.float32)  # [len(known), n_items]
        self.seen = seen

    def score(self, histories: list[np.ndarray], user_ids: np.ndarray) -> np.ndarray:
        hist = histories_csr(histories, self.weights.shape[1])[:, self.known]
        scores = np.asarray(hist @ self.weights, dtype=np.float32)
        if self.seen is not None:
            scores = _rank_unseen_last(scores, self.seen)
        return scores


EASE_MAX_ITEMS = 20_000  # a dense float64 Gram matrix of 20,000 items is 3.2 GB


def ease_weights(mat: sp.spmatrix, l2: float) -> np.ndarray:
    """EASE's closed form on a binary user x item matrix (B = -P / diag(P) column-wise, diag(B) = 0, with
    P = (X^T X + l2 I)^-1), from the project's one EASE solver (`GramSpectrum`). float64 [n_items, n_items]."""
    return GramSpectrum.of_gram((mat.T @ mat).toarray()).ease_weights(l2, np.float64)


def _ease_known(data: PeerData, l2: float, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(catalog rows of the items seen in training, EASE weights among them [n_known, n_known]). The Gram
    matrix's spectrum is computed once per training set and shared by every ridge value tried."""
    if data.n_items > EASE_MAX_ITEMS:
        raise ValueError(
            f"{name}: the catalog has {data.n_items:,} items; the dense EASE inverse is limited to {EASE_MAX_ITEMS:,}"
        )
    if "ease" not in data._cache:
        _, mat = data.user_items()
        known = np.flatnonzero(data.seen_items())
        data._cache["ease"] = (known, GramSpectrum.of_gram((mat[:, known].T @ mat[:, known]).toarray()))
    known, spectrum = data._cache["ease"]
    return known, spectrum.ease_weights(l2, np.float64)


def content_design(features: ItemFeatures, item_ids: Sequence[Any]) -> np.ndarray:
    """float64 [len(item_ids), d]: the frozen text embedding and the category multi-hot, each block
    L2-normalised per item (so the ridge penalty weighs both alike; zero rows stay zero), and a
    constant 1 (bias), in the order of `item_ids`."""
    order = features.positions(list(item_ids))
    parts = []
    if features.text is not None:
        parts.append(l2_normalize(np.asarray(features.text, dtype=np.float32)[order]))
    if features.categories is not None and np.asarray(features.categories).size:
        parts.append(l2_normalize(np.asarray(features.categories, dtype=np.float32)[order]))
    parts.append(np.ones((len(order), 1), dtype=np.float32))
    return np.concatenate(parts, axis=1).astype(np.float64)


def ridge_map(design: np.ndarray, targets: np.ndarray, alpha: float) -> np.ndarray:
    """W = argmin ||design W - targets||^2 + alpha ||W||^2, the last column of `design` (the bias)
    unpenalised. float64 [d, n_targets]."""
    penalty = np.full(design.shape[1], float(alpha))
    penalty[-1] = 0.0
    lhs = design.T @ design + np.diag(penalty)
    return np.linalg.solve(lhs, design.T @ targets)


# --------------------------------------------------------------------------- SASRec


@dataclass(frozen=True)
class SASRecParams:
    hidden: int = 64
    layers: int = 2
    heads: int = 1
    max_len: int = 50
    dropout: float = 0.2
    epochs: int = 80
    batch_size: int = 32  # 4x the Adam steps of 128 per epoch at about the same cost: learns faster
    lr: float = 1e-3

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> "SASRecParams":
        unknown = set(params) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"sasrec: unknown parameters {sorted(unknown)}")
        return cls(**{k: type(getattr(cls, k))(v) for k, v in params.items()})


class _CausalBlock(torch.nn.Module):
    """Pre-norm transformer block: masked multi-head self-attention, then a position-wise feed-forward
    layer, each with dropout on its residual branch. (No dropout on the attention weights: on CPU it
    costs more than the rest of the block's forward pass.)"""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"sasrec: hidden ({hidden}) must be a multiple of heads ({heads})")
        self.heads = heads
        self.norm_attn = torch.nn.LayerNorm(hidden)
        self.qkv = torch.nn.Linear(hidden, 3 * hidden)
        self.out = torch.nn.Linear(hidden, hidden)
        self.norm_ff = torch.nn.LayerNorm(hidden)
        self.ff = torch.nn.Sequential(
            torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, hidden), torch.nn.Dropout(dropout),
        )
        self.drop = torch.nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x [b, L, hidden]; allowed [b, 1, L, L] (query, key): True where the query may read the key."""
        b, length, hidden = x.shape
        q, k, v = (
            t.view(b, length, self.heads, hidden // self.heads).transpose(1, 2)
            for t in self.qkv(self.norm_attn(x)).chunk(3, dim=-1)
        )
        attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + self.drop(self.out(attended.transpose(1, 2).reshape(b, length, hidden)))
        return x + self.ff(self.norm_ff(x))


class _SASRec(torch.nn.Module):
    """Item ids 1..n_items (0 = padding, on the left); positions count from the right end of the
    window, so the latest item always has position max_len - 1. Output item embeddings are tied."""

    def __init__(self, n_items: int, p: SASRecParams) -> None:
        super().__init__()
        self.max_len = p.max_len
        self.items = torch.nn.Embedding(n_items + 1, p.hidden, padding_idx=0)
        self.positions = torch.nn.Embedding(p.max_len, p.hidden)
        self.drop = torch.nn.Dropout(p.dropout)
        self.blocks = torch.nn.ModuleList(_CausalBlock(p.hidden, p.heads, p.dropout) for _ in range(p.layers))
        self.norm = torch.nn.LayerNorm(p.hidden)
        torch.nn.init.normal_(self.items.weight, std=p.hidden ** -0.5)
        torch.nn.init.normal_(self.positions.weight, std=p.hidden ** -0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """[b, L] padded item ids -> [b, L, hidden] states (position t has read items <= t)."""
        length = seq.shape[1]
        pad = seq == 0
        pos = torch.arange(self.max_len - length, self.max_len, device=seq.device)
        x = self.drop(self.items(seq) + self.positions(pos)[None])
        # a query reads the past and itself, never padding; each position may always read itself,
        # so a padding row attends to something and stays finite (it is zeroed after every block)
        past = torch.tril(torch.ones(length, length, dtype=torch.bool, device=seq.device))
        allowed = (past[None] & ~pad[:, None, :]) | torch.eye(length, dtype=torch.bool, device=seq.device)[None]
        allowed = allowed[:, None]
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        for block in self.blocks:
            x = block(x, allowed) * keep
        return self.norm(x)

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """[..., hidden] -> [..., n_items] scores of catalog rows 0..n_items-1."""
        return states @ self.items.weight[1:].T


def _left_padded(seqs: Sequence[np.ndarray], length: int) -> np.ndarray:
    """int64 [len(seqs), length]: each sequence's last `length` entries, right-aligned, 0 on the left."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for r, seq in enumerate(seqs):
        tail = np.asarray(seq, dtype=np.int64)[-length:]
        if len(tail):
            out[r, length - len(tail):] = tail
    return out


def train_sequences(data: PeerData) -> list[np.ndarray]:
    """Each training user's catalog rows in time order (`pos`, else `timestamp`, else row order)."""
    frame = data.train
    if "pos" not in frame.columns and "timestamp" in frame.columns:
        frame = frame.sort(["user_id", "timestamp"], maintain_order=True)
    _, histories = histories_by_user(frame, data.item_index)
    return [np.asarray(h, dtype=np.int64) for h in histories]


class SASRecScorer:
    """Runs the trained transformer over each user's last `max_len` history items and scores every
    item by the last position's state; items without training data rank last."""

    def __init__(self, model: _SASRec, seen: np.ndarray, name: str = "sasrec", batch_size: int = 256) -> None:
        self.name, self.model, self.seen, self.batch_size = name, model.eval(), seen, batch_size

    @torch.no_grad()
    def score(self, histories: list[np.ndarray], user_ids: np.ndarray) -> np.ndarray:
        n_items = len(self.seen)
        out = np.zeros((len(histories), n_items), dtype=np.float32)
        for start in range(0, len(histories), self.batch_size):
            chunk = [np.asarray(h, dtype=np.int64) + 1 for h in histories[start : start + self.batch_size]]
            seq = torch.from_numpy(_left_padded(chunk, self.model.max_len))
            out[start : start + len(chunk)] = self.model.logits(self.model(seq)[:, -1]).numpy()
        return _rank_unseen_last(out, self.seen)


def train_sasrec(data: PeerData, p: SASRecParams, seed: int,
                 on_epoch: Callable[[int, SASRecScorer], bool] | None = None) -> SASRecScorer:
    """Next-item prediction at every position of a window of max_len + 1 consecutive training items
    per user, full cross-entropy over the catalog, Adam, a fixed number of epochs. A user with a longer
    sequence gets a new window each epoch, ending at a uniformly random position (at the end of the
    sequence or earlier), so training reads whole sequences at the cost of max_len positions per user:
    in dev runs on ml-100k loo (max_len 50, one seed) it gave test NDCG@10 about 0.10 after 60-80
    epochs, where always taking the last window stayed near 0.085-0.09.

    `on_epoch(epoch, scorer)`, when given, is called after each epoch (1-based) with a scorer of the model
    as it stands; training stops early when it returns False (time-to-quality curves, bench/training.py)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    seqs = [s + 1 for s in train_sequences(data) if len(s) >= 2]  # ids shifted: 0 = padding
    if not seqs:
        raise ValueError("sasrec: no training user has two or more interactions")
    model = _SASRec(data.n_items, p)
    optimiser = torch.optim.Adam(model.parameters(), lr=p.lr)
    sizes = np.array([len(s) for s in seqs])
    shortest_end = np.minimum(sizes, p.max_len + 1)
    model.train()
    for epoch in range(p.epochs):
        ends = rng.integers(shortest_end, sizes + 1)  # window = seq[end - max_len - 1 : end]
        windows = [s[max(0, e - p.max_len - 1) : e] for s, e in zip(seqs, ends.tolist())]
        lengths = np.array([len(w) - 1 for w in windows])
        order = rng.permutation(len(windows))
        for start in range(0, len(order), p.batch_size):
            batch = order[start : start + p.batch_size]
            length = int(lengths[batch].max())  # pad to the batch's longest window only
            inputs = torch.from_numpy(_left_padded([windows[i][:-1] for i in batch], length))
            targets = torch.from_numpy(_left_padded([windows[i][1:] for i in batch], length))
            real = targets > 0
            states = model(inputs)[real]
            loss = torch.nn.functional.cross_entropy(model.logits(states), targets[real] - 1)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        if on_epoch is not None:
            keep_going = on_epoch(epoch + 1, SASRecScorer(model, data.seen_items()))
            model.train()
            if keep_going is False:
                break
    return SASRecScorer(model, data.seen_items())


# --------------------------------------------------------------------------- peer builders


def fit_popularity(data: PeerData, params: Mapping[str, Any], seed: int) -> PopularityScorer:
    return PopularityScorer(data.train, data.item_index, name="popularity")


def fit_als(data: PeerData, params: Mapping[str, Any], seed: int,
            on_iteration: Callable[[int, FactorScorer], None] | None = None) -> FactorScorer:
    """`on_iteration(i, scorer)`, when given, is called after each ALS iteration i (1-based) with a scorer
    of the factors as they stand (for time-to-quality curves, bench/training.py)."""
    from implicit.cpu.als import AlternatingLeastSquares

    user_row, mat = data.user_items()
    model = AlternatingLeastSquares(
        factors=int(params.get("factors", 64)),
        regularization=float(params.get("regularization", 0.01)),
        alpha=float(params.get("alpha", 1.0)),
        iterations=int(params.get("iterations", 15)),
        random_state=seed,
        num_threads=1,
    )
    def fold_in(hist: sp.csr_matrix) -> np.ndarray:
        return model.recalculate_user(np.arange(hist.shape[0]), hist)

    def scorer() -> FactorScorer:
        return FactorScorer("als", user_row, model.user_factors, model.item_factors, seen=data.seen_items(), fold_in=fold_in)

    callback = None if on_iteration is None else (lambda iteration, *_: on_iteration(iteration + 1, scorer()))
    model.fit(mat, show_progress=False, callback=callback)
    return scorer()


def fit_bpr(data: PeerData, params: Mapping[str, Any], seed: int) -> FactorScorer:
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    user_row, mat = data.user_items()
    model = BayesianPersonalizedRanking(
        factors=int(params.get("factors", 64)),
        learning_rate=float(params.get("learning_rate", 0.01)),
        regularization=float(params.get("regularization", 0.01)),
        iterations=int(params.get("iterations", 100)),
        random_state=seed,
        num_threads=1,
    )
    model.fit(mat, show_progress=False)
    # implicit's BPR appends an item-bias column to item factors and a constant 1 to user factors
    return FactorScorer("bpr", user_row, model.user_factors, model.item_factors, seen=data.seen_items())


_TOKEN = re.compile(r"[a-z0-9]+")


def title_tokens(title: str | None) -> list[str]:
    """Lowercased alphanumeric tokens of a title, e.g. 'Toy Story (1995)' -> ['toy', 'story', '1995']."""
    return _TOKEN.findall((title or "").lower())


def hybrid_item_features(
    catalog: pl.DataFrame, item_index: Mapping[Any, int], seen: np.ndarray, min_word_count: int = 2
) -> tuple[sp.csr_matrix, list[str]]:
    """Row-normalised CSR [n_items, n_features]: identity (seen items only) + genres + title words.

    Title words must occur in >= `min_word_count` catalog titles (catalog text only, no interactions).
    Returns the matrix and the feature names.
    """
    n_items = len(item_index)
    rows_of = [item_index.get(i) for i in catalog["item_id"].to_list()]
    genres = catalog["categories"].to_list() if "categories" in catalog.columns else [None] * catalog.height
    titles = catalog["title"].to_list() if "title" in catalog.columns else [None] * catalog.height
    words_per_item = [sorted(set(title_tokens(t))) for t in titles]
    counts: dict[str, int] = {}
    for words in words_per_item:
        for w in words:
            counts[w] = counts.get(w, 0) + 1
    vocab_genres = sorted({g for gs in genres for g in (gs or [])})
    vocab_words = sorted(w for w, c in counts.items() if c >= min_word_count)
    seen_items = np.flatnonzero(seen)
    names = [f"item:{i}" for i in seen_items.tolist()] + [f"genre:{g}" for g in vocab_genres] + [f"word:{w}" for w in vocab_words]
    col_identity = {int(i): c for c, i in enumerate(seen_items.tolist())}
    offset_genre = len(seen_items)
    col_genre = {g: offset_genre + j for j, g in enumerate(vocab_genres)}
    offset_word = offset_genre + len(vocab_genres)
    col_word = {w: offset_word + j for j, w in enumerate(vocab_words)}
    r, c = [], []
    for row, gs, words in zip(rows_of, genres, words_per_item):
        if row is None:
            continue
        cols = []
        if row in col_identity:
            cols.append(col_identity[row])
        cols += [col_genre[g] for g in (gs or []) if g in col_genre]
        cols += [col_word[w] for w in words if w in col_word]
        r += [row] * len(cols)
        c += cols
    mat = sp.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(n_items, len(names)))
    mat.data[:] = 1.0
    sums = np.asarray(mat.sum(axis=1)).ravel()
    mat = sp.diags(1.0 / np.where(sums > 0, sums, 1.0)).astype(np.float32) @ mat
    return mat.tocsr(), names


def _fit_lightfm(data: PeerData, params: Mapping[str, Any], seed: int, hybrid: bool) -> FactorScorer:
    from lightfm import LightFM

    user_row, mat = data.user_items()
    seen = data.seen_items()
    item_features = None
    if hybrid:
        if data.catalog is None:
            raise ValueError("lightfm_hybrid needs the catalog (titles and genres)")
        item_features, _ = hybrid_item_features(data.catalog, data.item_index, seen)
    model = LightFM(
        no_components=int(params.get("no_components", 32)),
        loss=str(params.get("loss", "warp")),
        learning_rate=float(params.get("learning_rate", 0.05)),
        item_alpha=float(params.get("item_alpha", 0.0)),
        user_alpha=float(params.get("user_alpha", 0.0)),
        random_state=np.random.RandomState(seed),
    )
    model.fit(mat.tocoo(), item_features=item_features, epochs=int(params.get("epochs", 10)), num_threads=1)
    item_bias, item_emb = model.get_item_representations(item_features)
    _, user_emb = model.get_user_representations()
    return FactorScorer(
        "lightfm_hybrid" if hybrid else "lightfm_warp",
        user_row,
        user_emb,
        item_emb,
        item_bias=item_bias,
        seen=None if hybrid else seen,  # the hybrid scores cold items from their features
    )


def fit_lightfm_warp(data: PeerData, params: Mapping[str, Any], seed: int) -> FactorScorer:
    return _fit_lightfm(data, params, seed, hybrid=False)


def fit_lightfm_hybrid(data: PeerData, params: Mapping[str, Any], seed: int) -> FactorScorer:
    return _fit_lightfm(data, params, seed, hybrid=True)


def _knn(modality: str) -> Callable[[PeerData, Mapping[str, Any], int], ContentKNNScorer]:
    def fit(data: PeerData, params: Mapping[str, Any], seed: int) -> ContentKNNScorer:
        f = data.features
        if f is None:
            raise ValueError(f"knn_{modality} needs the frozen item features")
        modalities = ("text", "image") if modality == "both" else (modality,)
        if modality != "both" and getattr(f, modality) is None:
            raise ValueError(f"knn_{modality}: the {modality} encoder is disabled in this config")
        emb = frozen_content_embeddings(f, modalities)
        order = f.positions(list(data.item_index.keys()))  # rows in item_index order
        return ContentKNNScorer(emb[order], name=f"knn_{modality}")

    return fit


def fit_ease(data: PeerData, params: Mapping[str, Any], seed: int) -> ItemItemScorer:
    """EASE (Steck 2019) on the binary training matrix; items without training data rank last."""
    known, weights = _ease_known(data, float(params.get("l2", 500.0)), "ease")
    cols = np.zeros((len(known), data.n_items), dtype=np.float32)
    cols[:, known] = weights
    return ItemItemScorer("ease", known, cols, seen=data.seen_items())


def fit_ease_content(data: PeerData, params: Mapping[str, Any], seed: int) -> ItemItemScorer:
    """EASE on the known items plus a ridge map from item content to EASE columns for new items
    (the attribute-to-factor mapping of Gantner et al. 2010, with EASE columns as the factors)."""
    if data.features is None:
        raise ValueError("ease_content needs the frozen item features")
    known, weights = _ease_known(data, float(params.get("l2", 500.0)), "ease_content")
    design = content_design(data.features, list(data.item_index.keys()))
    new = np.setdiff1d(np.arange(data.n_items), known)
    cols = np.zeros((len(known), data.n_items), dtype=np.float32)
    cols[:, known] = weights
    if len(new):
        # one ridge regression per known row i of B: sample = a known item j, target = B[i, j]
        mapping = ridge_map(design[known], weights.T.astype(np.float64), float(params.get("alpha", 10.0)))
        cols[:, new] = (design[new] @ mapping).T
    return ItemItemScorer("ease_content", known, cols)


def fit_sasrec(data: PeerData, params: Mapping[str, Any], seed: int) -> SASRecScorer:
    """SASRec-style next-item transformer on each training user's sequence, full softmax over the catalog."""
    return train_sasrec(data, SASRecParams.of(params), seed)


def fit_recent_popularity(data: PeerData, params: Mapping[str, Any], seed: int) -> PopularityScorer:
    """Training interactions of the last `days` days before the latest training timestamp; ties
    broken by all-time counts. Without usable timestamps (none, or all equal): all-time popularity."""
    days = float(params.get("days", 28))
    ids = pl.DataFrame(
        {"item_id": list(data.item_index.keys()), "_col": list(data.item_index.values())},
        schema_overrides={"_col": pl.Int64},
    ).with_columns(pl.col("item_id").cast(data.train.schema["item_id"]))
    rows = data.train.join(ids, on="item_id", how="inner")
    cols = rows["_col"].to_numpy()
    all_time = np.bincount(cols, minlength=data.n_items).astype(np.float64)
    if "timestamp" not in rows.columns or rows.is_empty() or rows["timestamp"].n_unique() <= 1:
        return PopularityScorer.from_counts(all_time, name="recent_popularity")
    stamps = rows["timestamp"].to_numpy()
    recent_rows = stamps > stamps.max() - days * 86_400.0
    recent = np.bincount(cols[recent_rows], minlength=data.n_items).astype(np.float64)
    # recent counts first, all-time counts only among equal recent counts: an exact lexicographic key,
    # turned into dense ranks so float32 keeps the order (equal keys stay tied)
    key = recent * (all_time.max() + 1.0) + all_time
    ranks = np.unique(key, return_inverse=True)[1].reshape(-1)
    return PopularityScorer.from_counts(ranks.astype(np.float32), name="recent_popularity")


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class PeerSpec:
    name: str
    fit: Callable[[PeerData, Mapping[str, Any], int], Any]
    grid: tuple[dict, ...] = ({},)  # hyper-parameter points tried on validation; first = --quick
    stochastic: bool = False  # refit per seed
    needs: str = ""  # optional package this peer imports

    def available(self) -> bool:
        if not self.needs:
            return True
        import importlib.util

        return importlib.util.find_spec(self.needs) is not None


def _grid(**axes: Sequence[Any]) -> tuple[dict, ...]:
    points: list[dict] = [{}]
    for key, values in axes.items():
        points = [{**p, key: v} for p in points for v in values]
    return tuple(points)


PEERS: dict[str, PeerSpec] = {
    spec.name: spec
    for spec in [
        PeerSpec("popularity", fit_popularity),
        PeerSpec("als", fit_als, _grid(factors=[64, 128], regularization=[0.01, 0.1], iterations=[15]),
                 stochastic=True, needs="implicit"),
        PeerSpec("bpr", fit_bpr, _grid(factors=[64, 128], learning_rate=[0.01, 0.05], iterations=[100]),
                 stochastic=True, needs="implicit"),
        PeerSpec("lightfm_warp", fit_lightfm_warp, _grid(no_components=[32, 64], epochs=[10, 30]),
                 stochastic=True, needs="lightfm"),
        PeerSpec("lightfm_hybrid", fit_lightfm_hybrid, _grid(no_components=[32, 64], epochs=[10, 30]),
                 stochastic=True, needs="lightfm"),
        PeerSpec("knn_text", _knn("text")),
        PeerSpec("knn_image", _knn("image")),
        PeerSpec("knn_both", _knn("both")),
        PeerSpec("ease", fit_ease, _grid(l2=[500, 50, 100, 200, 1000, 2000])),
        PeerSpec("ease_content", fit_ease_content, _grid(l2=[500, 200, 1000], alpha=[10, 1, 100])),
        PeerSpec("sasrec", fit_sasrec, _grid(epochs=[40, 80]), stochastic=True),
        PeerSpec("recent_popularity", fit_recent_popularity, _grid(days=[28, 7, 14, 56])),
    ]
}


def timed_fit(spec: PeerSpec, data: PeerData, params: Mapping[str, Any], seed: int) -> tuple[Any, float]:
    """(scorer, fit seconds)."""
    started = time.perf_counter()
    scorer = spec.fit(data, params, seed)
    return scorer, time.perf_counter() - started
