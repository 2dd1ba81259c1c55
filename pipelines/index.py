"""Step `index`: (re)build a bundle's faiss index from its item vectors, e.g. to switch flat -> HNSW."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from recsys.bundle import load_bundle
from recsys.config import IndexConfig
from recsys.index import ItemIndex
from recsys.model.two_tower import retrieval_items

logger = logging.getLogger(__name__)


def run_index(bundle_dir: Path, cfg: IndexConfig) -> ItemIndex:
    """Rebuild `bundle_dir/index` with `cfg`; the old index stays in place until the new one is written."""
    bundle = load_bundle(bundle_dir)
    index = ItemIndex.build(retrieval_items(bundle.item_vectors, bundle.item_bias), bundle.features.item_ids, cfg)
    staging = Path(tempfile.mkdtemp(prefix=".index.", dir=bundle_dir))
    try:
        index.save(staging / "index")
        retired = bundle_dir / ".index.old"
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(bundle_dir / "index", retired)
        os.replace(staging / "index", bundle_dir / "index")
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # Keep bundle.json's record of the index kind in step with the files.
    meta_path = bundle_dir / "bundle.json"
    meta = json.loads(meta_path.read_text())
    meta["index_kind"] = index.kind
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, meta_path)
    logger.info("rebuilt %s index over %d items in %s", index.kind, len(index), bundle_dir)
    return index
