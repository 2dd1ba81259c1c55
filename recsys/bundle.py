"""The bundle: one directory with everything serving needs, versioned and checked on load.

Layout (all written into a temporary sibling directory, then renamed into place, so a killed job
never leaves a half-written bundle where a server could pick it up):

    bundle.json          schema version, model version, shapes, encoder fingerprints, id type
    config.yaml          the resolved pipeline config that produced it
    model.pt             two-tower weights (state dict)
    item_features.npz    frozen content features of the catalog (cold items get vectors from these)
    item_vectors.npy     item-tower vectors for every catalog item
    item_bias.npy        item-tower scalar bias for every catalog item
    index/               faiss index over [vector, bias] rows (row -> item id map inside)
    users.parquet        user_id, history (item ids, oldest first), history_times (their timestamps;
                         absent in older bundles): known users and their seen items
    catalog.parquet      item_id, title, categories: filters and display
    popularity.parquet   item_id, count: the fallback for unknown users
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from recsys import __version__
from recsys.config import PipelineConfig, load_config
from recsys.encoders.features import ItemFeatures
from recsys.hooks import pause_point
from recsys.index import ItemIndex
from recsys.model.modalities import MODALITIES, feature_widths
from recsys.model.two_tower import RetrievalModel, build_model
from recsys.paths import fsync_dir

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
REQUIRED_FILES = (
    "bundle.json",
    "config.yaml",
    "model.pt",
    "item_features.npz",
    "item_vectors.npy",
    "item_bias.npy",
    "index",
    "users.parquet",
    "catalog.parquet",
    "popularity.parquet",
)


class BundleError(RuntimeError):
    """A bundle is missing, incomplete, or disagrees with itself or with the running encoders."""


@dataclass
class Bundle:
    path: Path
    meta: dict
    config: PipelineConfig
    model: RetrievalModel
    features: ItemFeatures
    item_vectors: np.ndarray
    item_bias: np.ndarray
    index: ItemIndex
    users: pl.DataFrame
    catalog: pl.DataFrame
    popularity: pl.DataFrame

    @property
    def model_version(self) -> str:
        return self.meta["model_version"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (and root itself)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_staging(out_dir: Path) -> list[Path]:
    """Clear what a killed `save_bundle` of `out_dir` left beside it, when its process <pid> is gone:
    its staging folder (`.<name>.staging-<pid>-*`) is removed; a retired old bundle
    (`.<name>.old-<pid>`: killed between the two renames of a swap) is put back when `out_dir` is
    missing, else removed. A complete bundle at `out_dir` is never touched."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(out_dir.name)}\.(?:staging-(\d+)-.+|old-(\d+))$")
    if not out_dir.parent.is_dir():
        return removed
    for path in out_dir.parent.iterdir():
        match = pattern.match(path.name)
        if not match:
            continue
        pid = int(match.group(1) or match.group(2))
        if pid != os.getpid() and _pid_alive(pid):
            continue
        if match.group(2) and not out_dir.exists() and (path / "bundle.json").exists():
            os.replace(path, out_dir)
            logger.info("restored %s from %s, left by a bundle swap that did not finish", out_dir, path)
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        logger.info("removed %s, left by a bundle write that did not finish (process %d is gone)", path, pid)
    return removed


def save_bundle(
    out_dir: str | Path,
    *,
    config: PipelineConfig,
    model: RetrievalModel,
    features: ItemFeatures,
    index: ItemIndex,
    item_vectors: np.ndarray,
    item_bias: np.ndarray,
    users: pl.DataFrame,
    catalog: pl.DataFrame,
    popularity: pl.DataFrame,
    extra_meta: dict | None = None,
) -> Path:
    """Write a bundle atomically: build in a temp dir beside `out_dir`, then swap it in."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-{os.getpid()}-", dir=out_dir.parent))
    try:
        torch.save(model.state_dict(), staging / "model.pt")
        features.save(staging / "item_features.npz")
        np.save(staging / "item_vectors.npy", np.asarray(item_vectors, dtype=np.float32))
        np.save(staging / "item_bias.npy", np.asarray(item_bias, dtype=np.float32))
        index.save(staging / "index")
        users.write_parquet(staging / "users.parquet")
        catalog.write_parquet(staging / "catalog.parquet")
        popularity.write_parquet(staging / "popularity.parquet")
        (staging / "config.yaml").write_text(config.to_yaml())
        ids = np.asarray(features.item_ids)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        weights_hash = _sha256(staging / "model.pt")[:12]
        meta = {
            "schema_version": SCHEMA_VERSION,
            "recsys_version": __version__,
            "model_version": f"{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{weights_hash}",
            "created_at": created,
            "id_type": "int" if ids.dtype.kind in "iu" else "str",
            "n_items": int(len(ids)),
            "model_shape": model.shape_info(),
            "encoder_fingerprints": dict(features.fingerprints),
            "encoder_dims": {
                "text": None if features.text is None else int(features.text.shape[1]),
                "image": None if features.image is None else int(features.image.shape[1]),
            },
            "category_vocab": list(features.category_vocab),
            "item_id_vocab": model.item_id_vocab,  # items with an identity residual (hybrid model), else []
            "index_kind": index.kind,
            "files": {name: _sha256(staging / name) for name in ("model.pt", "item_vectors.npy", "item_bias.npy")},
            **(extra_meta or {}),
        }
        (staging / "bundle.json").write_text(json.dumps(meta, indent=2, default=str))
        _fsync_tree(staging)  # the rename below must not land before the files' contents (power loss)
        pause_point("bundle:staged")
        if out_dir.exists():
            retired = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, retired)
            os.replace(staging, out_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
        fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _check(condition: bool, path: Path, message: str) -> None:
    if not condition:
        raise BundleError(f"bundle {path}: {message}")


def _widths(shape: dict) -> dict:
    """Each modality's feature width; bundles before the modality registry recorded text_dim, image_dim
    and n_categories."""
    if "widths" in shape:
        return shape["widths"]
    return {"text": shape.get("text_dim"), "image": shape.get("image_dim"), "categories": shape.get("n_categories") or None}


def load_bundle(path: str | Path, expected_fingerprints: dict[str, str] | None = None) -> Bundle:
    """Load and cross-check a bundle; any disagreement raises BundleError naming what differs."""
    path = Path(path)
    _check(path.is_dir(), path, "not a directory (was it written? pass the folder that holds bundle.json)")
    missing = [name for name in REQUIRED_FILES if not (path / name).exists()]
    _check(not missing, path, f"missing {', '.join(missing)}")
    meta = json.loads((path / "bundle.json").read_text())
    version = meta.get("schema_version")
    _check(
        version == SCHEMA_VERSION,
        path,
        f"schema_version {version} is not supported by recsys {__version__} (expects {SCHEMA_VERSION})",
    )
    for name, digest in meta.get("files", {}).items():
        _check(_sha256(path / name) == digest, path, f"{name} does not match its recorded sha256 (corrupt or replaced)")
    config = load_config(path / "config.yaml", saved=True)
    features = ItemFeatures.load(path / "item_features.npz")
    _check(
        dict(features.fingerprints) == dict(meta["encoder_fingerprints"]),
        path,
        f"item_features fingerprints {features.fingerprints} != bundle.json {meta['encoder_fingerprints']}",
    )
    if expected_fingerprints is not None:
        for modality, fingerprint in expected_fingerprints.items():
            recorded = meta["encoder_fingerprints"].get(modality)
            _check(
                recorded == fingerprint,
                path,
                f"{modality} encoder fingerprint mismatch: bundle was built with {recorded!r}, "
                f"the loaded encoder is {fingerprint!r}; re-embed and retrain, or configure the same model",
            )
    shape = meta["model_shape"]
    widths, actual = _widths(shape), feature_widths(features)
    for modality in config.model.modalities:
        _check(
            modality in MODALITIES, path,
            f"model.modalities names {modality!r}, which no loaded module registers (name its module in RECSYS_PLUGINS)",
        )
        _check(
            not widths.get(modality) or actual.get(modality) == widths[modality],
            path,
            f"{modality} feature width {actual.get(modality)} != the model's {widths.get(modality)}",
        )
    id_vocab = meta.get("item_id_vocab") or []
    _check(
        len(id_vocab) == shape.get("n_id_items", 0),
        path,
        f"item_id_vocab has {len(id_vocab)} ids != model_shape n_id_items {shape.get('n_id_items', 0)}",
    )
    _check(
        shape.get("members", 1) == config.model.ensemble_size,
        path,
        f"model_shape members {shape.get('members', 1)} != config model.ensemble_size {config.model.ensemble_size}",
    )
    model = build_model(config.model, widths, item_id_vocab=id_vocab)
    state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise BundleError(f"bundle {path}: model.pt does not fit the recorded shapes: {err}") from err
    model.eval()
    vectors = np.load(path / "item_vectors.npy")
    _check(
        vectors.shape == (meta["n_items"], shape["dim"]),
        path,
        f"item_vectors shape {vectors.shape} != ({meta['n_items']}, {shape['dim']})",
    )
    bias = np.load(path / "item_bias.npy")
    _check(bias.shape == (meta["n_items"],), path, f"item_bias shape {bias.shape} != ({meta['n_items']},)")
    _check(len(features.item_ids) == meta["n_items"], path, f"item_features has {len(features.item_ids)} items, expected {meta['n_items']}")
    index = ItemIndex.load(path / "index")
    _check(index.dim == shape["dim"] + 1, path, f"index dim {index.dim} != model dim {shape['dim']} + 1 (bias column)")
    return Bundle(
        path=path,
        meta=meta,
        config=config,
        model=model,
        features=features,
        item_vectors=vectors,
        item_bias=bias,
        index=index,
        users=pl.read_parquet(path / "users.parquet"),
        catalog=pl.read_parquet(path / "catalog.parquet"),
        popularity=pl.read_parquet(path / "popularity.parquet"),
    )
