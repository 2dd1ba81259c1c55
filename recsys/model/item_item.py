"""A closed-form item-item block for the items seen in training (`model.item_item: ease`).

The towers score a known item through its content (plus an optional identity residual). On warm
users an item-item model fit in closed form is a stronger collaborative ranker than anything the
towers learn by gradient descent (docs/results.md). EASE (Steck 2019) scores an unseen item i for a
user with history weights x as (x M)_i / (l2 * d_i), where G = X^T X is the interaction Gram matrix,
M = G (G + l2 I)^-1 and d = diag((G + l2 I)^-1) (the zero-diagonal EASE solution, rewritten). M is
symmetric PSD with the eigenvectors of G, so its top `rank` eigen-pairs give factors V_r with
M ~ V_r V_r^T, and the score becomes an inner product: (sum_j x_j P_j) . Q_i with P_j = V_r[j] and
Q_i = V_r[i] / (l2 d_i). That is what lets the block ride in the same faiss index as the towers
(`recsys.model.two_tower.ItemItemBlend`).

History weights x_j = decay^age_j (age 0 = the latest item) let the block follow the recent items of
ordered logs; decay 1 reads the history as a set. When the history's timestamps are known
(the histories carry them, `recsys.data.histories`), an item's age counts the distinct timestamps after its own, so items
logged at the same time share a weight: their order within the tie carries no information (MovieLens
logs half its ratings in bulk; the protocol orders ties at random), and counting positions would weigh
them by that coin flip. On ordered logs the Gram matrix can count a pair of items by how close together
they were consumed (`pair_window`): G = sum_u X_u^T K_u X_u with
K_ab = exp(-|a - b| / window) over positions a, b. K is positive semi-definite, so G is too and the
rewriting above still holds. All choices (pair window, ridge, decay, blend weight) are picked on the
validation split after the towers are trained (`recsys.model.train`).

A new item has no row of G. With `model.item_item_new_items=content` its item side Q_i is predicted
from its frozen content by a kernel ridge map fit on the known items (`ContentKernel`: mostly the
rows of the known items nearest in content; `fit_content_map`, linear in the content, with sharpness 0): the
block then scores it by how the user's history co-occurs with known items of similar content. Its s_i stays 0,
so it adds nothing to a history until the block is refit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.data.histories import times_of


def interaction_gram(sequences: list[np.ndarray], n_items: int, users_per_chunk: int = 4096,
                     user_weights: np.ndarray | None = None) -> np.ndarray:
    """X^T W X (float64 [n_items, n_items]) of the binary user x item matrix X (W: `user_weights` on the
    diagonal, 1 without), built a chunk of users at a time so the dense user rows never exceed
    `users_per_chunk` x n_items."""
    gram = np.zeros((n_items, n_items), dtype=np.float64)
    for start in range(0, len(sequences), users_per_chunk):
        chunk = sequences[start : start + users_per_chunk]
        rows = np.zeros((len(chunk), n_items), dtype=np.float32)
        for r, items in enumerate(chunk):
            rows[r, np.asarray(items, dtype=np.int64)] = 1.0  # repeats of an item count once
        weighted = rows if user_weights is None else rows * np.asarray(user_weights[start : start + len(chunk)], np.float32)[:, None]
        gram += rows.T.astype(np.float64) @ weighted
    return gram


def history_length_weights(sequences: list[np.ndarray], power: float) -> np.ndarray | None:
    """Each user's weight in the Gram matrix, (distinct items)^-power, scaled so the Gram matrix keeps its
    trace (the ridge values keep their meaning); None for power 0. A long history then counts less per
    pair: its many items co-occur by its owner's breadth, not by their similarity."""
    if power == 0.0:
        return None
    lengths = np.array([np.unique(np.asarray(s, dtype=np.int64)).size for s in sequences], dtype=np.float64)
    weights = np.maximum(lengths, 1.0) ** -power
    return weights * lengths.sum() / max(float((weights * lengths).sum()), 1e-12)


@dataclass
class GramSpectrum:
    """Eigen-decomposition of the training Gram matrix, shared by every ridge value tried.

    With a ridge shaped by popularity (`ridge_shape` D: item i's ridge is l2 * D_i) the spectrum is that of
    D^-1/2 G D^-1/2, since G + l2 D = D^1/2 (D^-1/2 G D^-1/2 + l2 I) D^1/2: still one decomposition for every l2."""

    eigenvalues: np.ndarray  # [n], ascending, clipped at 0
    eigenvectors: np.ndarray  # [n, n], columns
    ridge_shape: np.ndarray | None = None  # [n] D, each item's share of the ridge; None: 1 for every item

    @classmethod
    def of_sequences(
        cls, sequences: list[np.ndarray], n_items: int, max_items: int, pair_window: float = 0.0,
        user_power: float = 0.0, popularity_ridge: float = 0.0,
    ) -> "GramSpectrum":
        """The spectrum of the Gram matrix of these training sequences (item indices, oldest first):
        X^T X, or `windowed_gram` with `pair_window` > 0; users weighted by `history_length_weights(user_power)`;
        the ridge shaped by `popularity_ridge` (`of_gram`). It needs an n x n eigen-decomposition, so
        catalogs above `max_items` are refused rather than left to run for hours."""
        if n_items > max_items:
            raise ValueError(
                f"EASE (model.item_item=ease, train.teacher=ease) needs an {n_items} x {n_items} eigen-decomposition, "
                f"above train.ease_max_items={max_items}; raise the limit, or turn both off"
            )
        weights = history_length_weights(sequences, user_power)
        gram = (windowed_gram(sequences, n_items, pair_window, weights) if pair_window > 0
                else interaction_gram(sequences, n_items, user_weights=weights))
        return cls.of_gram(gram, popularity_ridge)

    @classmethod
    def of_gram(cls, gram: np.ndarray, popularity_ridge: float = 0.0) -> "GramSpectrum":
        """The spectrum of a Gram matrix X^T X given as such (float64 [n, n]). `popularity_ridge` a > 0
        shapes the ridge as l2 * (1 + a * count_i / mean count), count_i = G_ii (EDLAE-style, Steck 2020): a
        popular item's column is held back more, so it stops predicting itself through its many
        co-occurrences."""
        gram = np.asarray(gram, dtype=np.float64)
        if popularity_ridge < 0:
            raise ValueError(f"train.item_item_popularity_ridges: values must be >= 0, got {popularity_ridge}")
        shape = None
        if popularity_ridge > 0:
            counts = np.diag(gram).copy()
            seen = counts > 0
            shape = 1.0 + popularity_ridge * counts / (counts[seen].mean() if seen.any() else 1.0)
            root = np.sqrt(shape)
            gram = gram / root[:, None] / root[None, :]
        values, vectors = np.linalg.eigh(gram)
        return cls(np.clip(values, 0.0, None), vectors, shape)

    def _unshape(self) -> np.ndarray:
        """D^-1/2 per item (1 without a shaped ridge)."""
        return np.ones(self.eigenvalues.shape[0]) if self.ridge_shape is None else 1.0 / np.sqrt(self.ridge_shape)

    def _check_ridge(self, l2: float) -> None:
        if l2 <= 0:
            raise ValueError(f"EASE ridge values (train.item_item_l2, train.teacher_l2) must be > 0, got {l2}")

    def ease_weights(self, l2: float, dtype: type = np.float32) -> np.ndarray:
        """The full EASE solution B ([n, n] of `dtype`, zero diagonal): a user with item set H scores item j
        as sum_{i in H} B[i, j]. B = I - P / diag(P) column-wise, P = (G + l2 I)^-1 from the spectrum."""
        self._check_ridge(l2)
        precision = (self.eigenvectors / (self.eigenvalues + l2)) @ self.eigenvectors.T
        if self.ridge_shape is not None:
            unshape = self._unshape()
            precision *= unshape[:, None] * unshape[None, :]
        weights = precision / -np.diag(precision)  # column j divided by -P[j, j]
        weights[np.diag_indices_from(weights)] = 0.0
        return weights.astype(dtype)

    def factors(self, l2: float, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q [n, rank] float32, s [n] float32) of the rank-`rank` EASE model with ridge `l2`:
        score_i = (sum_j x_j s_j Q_j) . Q_i for an item i outside the history. Columns beyond the
        catalog size are zero."""
        self._check_ridge(l2)
        n = self.eigenvalues.shape[0]
        keep = min(rank, n)
        top = np.argsort(-self.eigenvalues, kind="stable")[:keep]
        shrink = self.eigenvalues[top] / (self.eigenvalues[top] + l2)  # eigenvalues of M = G (G + l2 I)^-1
        unshape = self._unshape()
        basis = self.eigenvectors[:, top] * np.sqrt(shrink) * unshape[:, None]  # M ~ basis basis^T
        # d = diag((G + l2 D)^-1) from the full spectrum (exact, not truncated).
        diag_inverse = (self.eigenvectors**2) @ (1.0 / (self.eigenvalues + l2)) * unshape**2
        item_scale = l2 * diag_inverse  # s_i = l2 d_i, in (0, 1] (in (0, 1 / D_i] with a shaped ridge)
        vectors = np.zeros((n, rank), dtype=np.float32)
        vectors[:, :keep] = basis / item_scale[:, None]
        return vectors, item_scale.astype(np.float32)


def content_similarity_kernel(design: np.ndarray, anchors: np.ndarray, sharpness: float, n_parts: int) -> np.ndarray:
    """exp(sharpness * (s - 1)) [len(design), len(anchors)], s the mean over the `n_parts` modalities of the
    cosine between an item's and an anchor's part (the designs unit-scaled per modality, bias column last;
    the anchors without it). 1 for identical content, falling with dissimilarity at the rate `sharpness`."""
    similarity = np.asarray(design, dtype=np.float64)[:, :-1] @ np.asarray(anchors, dtype=np.float64).T / max(n_parts, 1)
    return np.exp(float(sharpness) * (similarity - 1.0))


@dataclass
class ContentKernel:
    """Kernel ridge maps from content to targets (rows = known items): new item rows are mean + k(x, anchors) A
    with (K + l2 I) A = targets - mean, K = `content_similarity_kernel` among the known items (the anchors: their
    design without its bias column). Unlike a linear map of the content, a new item's row is drawn mostly from the
    known items whose content is nearest (docs/results.md). The eigen-decomposition of K is computed once and
    reused for every target and ridge (the block's search maps new factors per ridge and pair window)."""

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray

    @classmethod
    def of(cls, design: np.ndarray, sharpness: float, n_parts: int) -> "ContentKernel":
        """Eigenvectors kept in float32: a search holds one decomposition per sharpness (n x n each)."""
        design = np.asarray(design, dtype=np.float64)
        eigenvalues, eigenvectors = np.linalg.eigh(content_similarity_kernel(design, design[:, :-1], sharpness, n_parts))
        return cls(eigenvalues, eigenvectors.astype(np.float32))

    def maps(self, targets: np.ndarray, l2: list[float]) -> list[np.ndarray]:
        """One map per ridge value: [n_known + 1, rank], A stacked on the mean, so [k(x, anchors), 1] @ map
        predicts a row (`predict_content_rows`)."""
        targets = np.asarray(targets, dtype=np.float64)
        mean = targets.mean(axis=0, keepdims=True)
        vectors = self.eigenvectors.astype(np.float64)
        projected = vectors.T @ (targets - mean)
        return [np.concatenate([vectors @ (projected / (self.eigenvalues + value)[:, None]), mean]).astype(np.float32)
                for value in l2]


def predict_content_rows(design: np.ndarray, content_map: np.ndarray, anchors: np.ndarray | None, sharpness: float,
                         n_parts: int, chunk_size: int = 4096) -> np.ndarray:
    """The item side the content map predicts for the items of `design`: design @ map for a linear map
    (no anchors), [kernel to the anchors, 1] @ map for a kernel map (`ContentKernel.maps`)."""
    if anchors is None or not len(anchors):
        return np.asarray(design, dtype=np.float64) @ content_map
    rows = np.empty((len(design), content_map.shape[1]), dtype=np.float64)
    for start in range(0, len(design), chunk_size):  # a large new catalog never holds its whole kernel at once
        kernel = content_similarity_kernel(design[start : start + chunk_size], anchors, sharpness, n_parts)
        rows[start : start + chunk_size] = kernel @ content_map[:-1] + content_map[-1]
    return rows


def fit_content_map(design: np.ndarray, targets: np.ndarray, l2: float | list[float]) -> np.ndarray | list[np.ndarray]:
    """Ridge map W [p, rank] with design @ W ~ targets (rows = known items): argmin |D W - T|^2 + l2 |W|^2.
    A list of ridge values gives one map per value from one Gram matrix."""
    design = np.asarray(design, dtype=np.float64)
    gram, cross = design.T @ design, design.T @ np.asarray(targets, dtype=np.float64)
    eye = np.eye(gram.shape[0])
    maps = [np.linalg.solve(gram + value * eye, cross).astype(np.float32) for value in np.atleast_1d(l2)]
    return maps if isinstance(l2, list) else maps[0]


def windowed_gram(sequences: list[np.ndarray], n_items: int, window: float, user_weights: np.ndarray | None = None) -> np.ndarray:
    """sum_u w_u X_u^T K_u X_u (float64 [n_items, n_items]), K_ab = exp(-|a - b| / window) over the positions
    of a user's items: items consumed close together count more (w_u: `user_weights`, 1 without). An item
    repeated in a history counts once, at its first position (as in `interaction_gram`)."""
    if window <= 0:
        raise ValueError(f"train.item_item_pair_windows: a window must be > 0 (0 = no window), got {window}")
    gram = np.zeros((n_items, n_items), dtype=np.float64)
    for u, sequence in enumerate(sequences):
        items, first = np.unique(np.asarray(sequence, dtype=np.int64), return_index=True)
        weight = 1.0 if user_weights is None else float(user_weights[u])
        gram[np.ix_(items, items)] += weight * np.exp(-np.abs(first[:, None] - first[None, :]) / window)
    return gram


def history_ages(length: int, times: np.ndarray | None = None) -> np.ndarray:
    """The age of each position of a history (oldest first; the latest item has age 0): positions
    after it, or with `times` (one timestamp per item) the distinct timestamps after its own, so
    items logged at the same time share an age."""
    if times is None:
        return np.arange(length - 1, -1, -1, dtype=np.float64)
    times = np.asarray(times)
    if times.shape != (length,):
        raise ValueError(f"history times: expected {length} timestamps (one per history item), got shape {times.shape}")
    distinct = np.unique(times)
    return (len(distinct) - 1 - np.searchsorted(distinct, times)).astype(np.float64)


def history_weights(lengths: list[int], decay: float, times: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """decay^age for each position of each history (`history_ages`; the latest item has weight 1)."""
    if times is not None and len(times) != len(lengths):
        raise ValueError(f"history times: expected one array per history ({len(lengths)}), got {len(times)}")
    return [decay ** history_ages(length, None if times is None else times[i]) for i, length in enumerate(lengths)]


def block_user_vectors(histories: list[np.ndarray], inputs: np.ndarray, decay: float, chunk_size: int = 1024) -> np.ndarray:
    """[n_users, rank]: sum_j decay^age_j inputs[h_j] per history (`inputs` = s_j Q_j rows of the
    items, indexed by the histories; ages from the histories' timestamps where they carry them, see
    `history_ages`). Dense per chunk of users over the rows the chunk uses."""
    rank = inputs.shape[1]
    times = times_of(histories)
    out = np.zeros((len(histories), rank), dtype=np.float32)
    for start in range(0, len(histories), chunk_size):
        chunk = [np.asarray(h, dtype=np.int64) for h in histories[start : start + chunk_size]]
        if not chunk or not sum(len(h) for h in chunk):
            continue
        used, local = np.unique(np.concatenate(chunk), return_inverse=True)
        weights = np.zeros((len(chunk), len(used)), dtype=np.float64)
        rows = np.repeat(np.arange(len(chunk)), [len(h) for h in chunk])
        chunk_times = None if times is None else times[start : start + chunk_size]
        np.add.at(weights, (rows, local), np.concatenate(history_weights([len(h) for h in chunk], decay, chunk_times)))
        out[start : start + len(chunk)] = (weights @ inputs[used].astype(np.float64)).astype(np.float32)
    return out
