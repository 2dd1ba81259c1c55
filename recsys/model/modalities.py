"""The kinds of item content the item tower reads, in one registry.

A modality is where its frozen features come from in an `ItemFeatures` (an [n, d] array and which
items have it) and the head that projects them into the shared item space. The item tower builds one
head per modality listed in `model.modalities` that the features carry, fuses the heads with a gate,
and masks out what an item lacks; bundles record each modality's width. Adding a modality is one
`register` call (and an encoder that fills `ItemFeatures.extra[name]`): docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import nn

from recsys.config import ModelConfig
from recsys.encoders.features import EXTRA_ENCODERS, EncoderEntry, ItemFeatures
from recsys.model.towers import projection_head


@dataclass(frozen=True)
class Modality:
    name: str  # the name in model.modalities, the head's name, the bundle's record of its width
    values: Callable[[ItemFeatures], np.ndarray | None]  # [n, d] features, or None when the catalog has none
    present: Callable[[ItemFeatures], np.ndarray]  # [n] bool: the items that have it
    head: Callable[[int, ModelConfig], nn.Module]  # (feature width, config) -> module onto cfg.dim
    encoder: EncoderEntry | None = None  # the frozen encoder that fills ItemFeatures.extra[name], if any


MODALITIES: dict[str, Modality] = {}


def register(modality: Modality) -> Modality:
    """Add (or replace) a modality, and its encoder with the encoders layer; the registry's order is the
    order the tower stacks its heads in."""
    MODALITIES[modality.name] = modality
    if modality.encoder is not None:
        EXTRA_ENCODERS[modality.name] = modality.encoder
    return modality


def unregister(name: str) -> None:
    MODALITIES.pop(name, None)
    EXTRA_ENCODERS.pop(name, None)


def _mask_or_all(mask: np.ndarray | None, values: np.ndarray | None) -> np.ndarray:
    n = 0 if values is None else len(values)
    return np.ones(n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)


def _categories(features: ItemFeatures) -> np.ndarray | None:
    categories = features.categories
    return None if categories is None or categories.shape[1] == 0 else categories


register(Modality(
    "text", lambda f: f.text, lambda f: _mask_or_all(f.text_mask, f.text),
    lambda width, cfg: projection_head(width, cfg.head_hidden, cfg.dim, cfg.head_dropout),
))
register(Modality(
    "image", lambda f: f.image, lambda f: _mask_or_all(f.image_mask, f.image),
    lambda width, cfg: projection_head(width, cfg.head_hidden, cfg.dim, cfg.head_dropout),
))
register(Modality(
    "categories", _categories, lambda f: np.asarray(f.categories).sum(axis=1) > 0,
    lambda width, cfg: nn.Linear(width, cfg.dim, bias=False),
))


def feature_widths(features: ItemFeatures) -> dict[str, int | None]:
    """Each registered modality's feature width in `features` (None: the catalog has none)."""
    widths = {}
    for name, modality in MODALITIES.items():
        values = modality.values(features)
        widths[name] = None if values is None else int(np.asarray(values).shape[1])
    return widths


def used_modalities(cfg: ModelConfig, widths: dict[str, int | None]) -> list[str]:
    """The modalities the item tower reads: listed in model.modalities and present in the features,
    in registry order."""
    unknown = sorted(set(cfg.modalities) - set(MODALITIES))
    if unknown:
        raise ValueError(f"model.modalities: unknown {unknown}; registered: {sorted(MODALITIES)}")
    used = [name for name in MODALITIES if name in cfg.modalities and widths.get(name)]
    if not used:
        raise ValueError(
            f"the item tower needs at least one modality: model.modalities={cfg.modalities}, "
            f"features carry {[n for n, w in widths.items() if w]}"
        )
    return used
