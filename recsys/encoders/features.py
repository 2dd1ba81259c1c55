"""Item features: frozen text/image embeddings + category multi-hot, in one file per catalog.

This is the only thing the item tower sees, so a cold item gets a vector as soon as its features exist.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from recsys.config import EncodersConfig
from recsys.encoders.base import FrozenEncoder
from recsys.encoders.store import FeatureStore, savez_atomic

log = logging.getLogger(__name__)

_OPTIONAL = ("text", "text_mask", "image", "image_mask")


def _key(value: Any) -> Any:
    """Hashable python scalar for an id, so np.int64(3), np.int32(3) and 3 look up alike."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class ItemFeatures:
    """Per-item feature arrays aligned on `item_ids` (row i of every array is item_ids[i])."""

    item_ids: np.ndarray
    text: np.ndarray | None
    text_mask: np.ndarray | None
    image: np.ndarray | None
    image_mask: np.ndarray | None
    categories: np.ndarray  # float32 multi-hot [n, n_cat]
    category_vocab: list[str]
    fingerprints: dict[str, str] = field(default_factory=dict)
    # Features of further modalities ([n, d] each, zero rows where an item has none), by modality name:
    # what an encoder a project adds fills, and its entry in recsys.model.modalities reads.
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.item_ids)

    def save(self, path: Path | str) -> None:
        """One .npz, written atomically; ids stay int64 or str."""
        arrays: dict[str, np.ndarray] = {
            "item_ids": _normalise_ids(self.item_ids),
            "categories": np.asarray(self.categories, dtype=np.float32),
            "category_vocab": np.array(self.category_vocab, dtype=str),
            "fingerprints": np.array(json.dumps(self.fingerprints, sort_keys=True)),
        }
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                arrays[name] = np.asarray(value)
        for name, value in self.extra.items():
            arrays[f"extra.{name}"] = np.asarray(value)
        savez_atomic(Path(path), **arrays)

    @classmethod
    def load(cls, path: Path | str) -> ItemFeatures:
        with np.load(Path(path), allow_pickle=False) as data:
            optional = {name: (data[name] if name in data.files else None) for name in _OPTIONAL}
            return cls(
                item_ids=data["item_ids"],
                categories=data["categories"],
                category_vocab=data["category_vocab"].tolist(),
                fingerprints=json.loads(str(data["fingerprints"])),
                extra={name[len("extra."):]: data[name] for name in data.files if name.startswith("extra.")},
                **optional,
            )

    def positions(self, item_ids: Any) -> np.ndarray:
        """Row of each id; KeyError names unknown ids."""
        lookup = {_key(v): row for row, v in enumerate(self.item_ids)}
        rows, unknown = [], []
        for value in np.asarray(item_ids).tolist():
            row = lookup.get(value)
            (unknown.append(value) if row is None else rows.append(row))
        if unknown:
            raise KeyError(f"{len(unknown)} item ids not in features, e.g. {unknown[:5]}")
        return np.asarray(rows, dtype=np.int64)

    def subset(self, item_ids: Any) -> ItemFeatures:
        """Features of `item_ids`, in that order."""
        rows = self.positions(item_ids)

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[rows]

        return ItemFeatures(
            item_ids=self.item_ids[rows],
            text=take(self.text),
            text_mask=take(self.text_mask),
            image=take(self.image),
            image_mask=take(self.image_mask),
            categories=self.categories[rows],
            category_vocab=list(self.category_vocab),
            fingerprints=dict(self.fingerprints),
            extra={name: value[rows] for name, value in self.extra.items()},
        )


def _normalise_ids(ids: Any) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64)
    return ids.astype(str)


_ENCODERS: dict[tuple[str, str, str], FrozenEncoder] = {}
_ENCODERS_LOCK = threading.Lock()


@dataclass(frozen=True)
class EncoderEntry:
    """A frozen encoder beyond text and image: how to build it, and what it reads of each catalog row
    (one input per item, None where the item has nothing to encode). Its features go to
    `ItemFeatures.extra[name]`."""

    factory: Callable[[EncodersConfig], FrozenEncoder]
    inputs: Callable[[pl.DataFrame], list]


EXTRA_ENCODERS: dict[str, EncoderEntry] = {}  # filled by recsys.model.modalities.register


def load_encoders(cfg: EncodersConfig) -> dict[str, FrozenEncoder]:
    """The enabled encoders, keyed by modality; each (config, device) is loaded once per process."""
    from recsys.encoders.image import ImageEncoder
    from recsys.encoders.text import TextEncoder

    sections = {"text": (cfg.text, TextEncoder), "image": (cfg.image, ImageEncoder)}
    out: dict[str, FrozenEncoder] = {}
    with _ENCODERS_LOCK:
        for modality, (section, factory) in sections.items():
            if not section.enabled:
                continue
            # batch_size does not change outputs, so it does not force a reload
            key = (modality, section.model_dump_json(exclude={"enabled", "batch_size"}), cfg.device)
            if key not in _ENCODERS:
                _ENCODERS[key] = factory(section, device=cfg.device)
            out[modality] = _ENCODERS[key]
        for modality, entry in EXTRA_ENCODERS.items():
            key = (modality, "", cfg.device)
            if key not in _ENCODERS:
                _ENCODERS[key] = entry.factory(cfg)
            out[modality] = _ENCODERS[key]
    return out


def category_multi_hot(values: list[list[str] | None], vocab: list[str]) -> np.ndarray:
    """float32 [n, len(vocab)]; categories outside `vocab` are ignored."""
    index = {c: j for j, c in enumerate(vocab)}
    out = np.zeros((len(values), len(vocab)), dtype=np.float32)
    for row, cats in enumerate(values):
        for c in cats or []:
            j = index.get(c)
            if j is not None:
                out[row, j] = 1.0
    return out


def _warn_unusable_images(ids: np.ndarray, paths: list, mask: np.ndarray) -> None:
    """One warning counting the items whose image path gave no image (a missing file, a folder, a
    truncated or unreadable file): they are embedded without an image (zero row, mask False)."""
    given = [i for i, p in enumerate(paths) if isinstance(p, (str, Path)) and str(p).strip()]
    bad = [i for i in given if not mask[i]]
    if bad:
        examples = ", ".join(f"item {_key(ids[i])} at {paths[i]}" for i in bad[:3])
        log.warning("image: %d of %d item(s) with an image path have no usable image (missing, a folder or unreadable) "
                    "and are embedded without one; first: %s", len(bad), len(given), examples)


def build_item_features(
    catalog: pl.DataFrame,
    cfg: EncodersConfig,
    *,
    encoders: dict[str, FrozenEncoder] | None = None,
    store: FeatureStore | None = None,
    category_vocab: list[str] | None = None,
    show_progress: bool = True,
) -> ItemFeatures:
    """Embed a catalog (item_id, title, text, image path, categories) with the enabled encoders.

    With a `store`, only items whose content changed since the last run are encoded. Pass the
    training `category_vocab` when featurising new items for serving: unknown categories are ignored.
    """
    from recsys.encoders.text import build_item_texts, select_text_columns

    encoders = load_encoders(cfg) if encoders is None else encoders
    ids = catalog["item_id"].to_numpy()
    arrays: dict[str, np.ndarray | None] = {name: None for name in _OPTIONAL}
    extra: dict[str, np.ndarray] = {}
    for modality, encoder in encoders.items():
        if modality == "text":
            columns = select_text_columns(catalog, cfg.text.fields)
            log.info(columns.describe())
            inputs = build_item_texts(catalog, columns.used)
        elif modality == "image":
            inputs = catalog["image"].to_list() if "image" in catalog.columns else [None] * catalog.height
        elif modality in EXTRA_ENCODERS:
            inputs = EXTRA_ENCODERS[modality].inputs(catalog)
        else:
            raise ValueError(f"unknown encoder modality {modality!r}")
        if store is not None:
            emb, mask, stats = store.encode_with_cache(encoder, ids.tolist(), inputs, show_progress=show_progress)
        else:
            emb, mask = encoder.encode(inputs, ids=ids.tolist(), show_progress=show_progress)
            stats = {"cached": 0, "encoded": len(inputs)}
        log.info("%s features: %d items, %d present, %s", modality, len(mask), int(mask.sum()), stats)
        if modality == "image":
            _warn_unusable_images(ids, inputs, mask)
        if modality in _OPTIONAL:
            arrays[modality], arrays[f"{modality}_mask"] = emb, mask
        else:  # zero rows where an item has none
            extra[modality] = np.where(np.asarray(mask, dtype=bool)[:, None], emb, 0.0).astype(np.float32)

    cats = catalog["categories"].to_list() if "categories" in catalog.columns else [None] * catalog.height
    if category_vocab is None:
        category_vocab = sorted({c for row in cats for c in (row or [])})
    return ItemFeatures(
        item_ids=_normalise_ids(ids),
        categories=category_multi_hot(cats, category_vocab),
        category_vocab=list(category_vocab),
        fingerprints={modality: enc.fingerprint for modality, enc in encoders.items()},
        extra=extra,
        **arrays,
    )
