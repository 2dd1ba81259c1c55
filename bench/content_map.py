"""New items through EASE: a content map linear in the features against the kernel ridge map.

The attribute-to-factor map (Gantner et al. 2010, the `ease_content` peer) predicts a new item's EASE column
from its frozen text + genre features with a ridge map *linear* in those features. The item-item block of
recsys predicts it with a kernel ridge map over the known items (recsys.model.item_item.ContentKernel), so
a new item's column is drawn mostly from the known items nearest in content. This benchmark isolates that
one difference: the same EASE fit on the known items of a cold split, the same features (each modality unit
length), and each map's settings picked on validation (the held-out validation items ranked among
themselves), then test (the cold test items among themselves) with the library's `RankingJudge`. No towers.

Writes bench/results/content_map_<dataset>[-titles].json and prints a markdown table (docs/results.md
quotes it).

Run:  python bench/content_map.py --dataset ml-100k --split-seeds 42,101,102,103
      python bench/content_map.py --dataset ml-100k --split-seeds 42,101,102,103 --titles-only
      python bench/content_map.py --dataset ml-1m --split-seeds 42,101
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.peers import PeerData, _ease_known, content_design, ridge_map  # noqa: E402
from bench.quality import DATASETS, DEFAULT_CONFIGS, TITLES_ONLY  # noqa: E402
from recsys.config import PipelineConfig, load_config  # noqa: E402
from recsys.data.readers import load_dataset  # noqa: E402
from recsys.data.splits import make_split  # noqa: E402
from recsys.encoders.features import build_item_features  # noqa: E402
from recsys.encoders.store import FeatureStore  # noqa: E402
from recsys.eval.protocol import RankingJudge, build_queries  # noqa: E402
from recsys.model.item_item import ContentKernel, predict_content_rows  # noqa: E402
from recsys.model.train import item_index_of, item_rows  # noqa: E402

log = logging.getLogger("bench.content_map")
LINEAR_RIDGES = (1.0, 10.0, 100.0)  # the ease_content peer's grid (bench/peers.py)


def history_matrix(histories, known: np.ndarray, n_items: int) -> np.ndarray:
    """[n_queries, n_known]: 1 where a query's history holds a known item."""
    out = np.zeros((len(histories), n_items))
    for row, history in enumerate(histories):
        out[row, np.asarray(history, dtype=np.int64)] = 1.0
    return out[:, known]


def one_split(cfg: PipelineConfig, catalog, interactions, features, l2: float, sharpness: list[float], ridges: list[float]) -> dict:
    item_index = item_index_of(np.asarray(features.item_ids))
    n = len(item_index)
    split = make_split("cold", interactions, features.item_ids, cfg.eval)
    judges = {
        stage: RankingJudge(build_queries(split, item_index, stage), n,
                            item_rows(split.meta["valid_candidate_items"] if stage == "valid" else split.candidate_items, item_index))
        for stage in ("valid", "test")
    }
    data = PeerData(split.train, item_index, catalog=catalog, features=features)
    design = content_design(features, list(item_index.keys()))  # unit-scaled text, genres, bias
    n_parts = sum(1 for part in (features.text, features.categories) if part is not None and np.asarray(part).size)
    known, weights = _ease_known(data, l2, "content_map")
    new = np.setdiff1d(np.arange(n), known)
    histories = {stage: history_matrix(judge.queries.histories, known, n) for stage, judge in judges.items()}
    targets = weights.T.astype(np.float64)  # one row per known item: its EASE column

    def values(new_columns: np.ndarray) -> dict:
        columns = np.zeros((len(known), n))
        columns[:, known] = weights
        columns[:, new] = new_columns.T
        return {stage: judge.value((histories[stage] @ columns).astype(np.float32), "ndcg@10") for stage, judge in judges.items()}

    rows = []
    started = time.perf_counter()
    for ridge in LINEAR_RIDGES:
        rows.append({"map": "linear", "ridge": ridge, **values(design[new] @ ridge_map(design[known], targets, ridge))})
    linear_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for value in sharpness:
        kernel = ContentKernel.of(design[known], value, n_parts)
        for ridge, content_map in zip(ridges, kernel.maps(targets, ridges)):
            predicted = predict_content_rows(design[new], content_map, design[known][:, :-1], value, n_parts)
            rows.append({"map": "kernel", "sharpness": value, "ridge": ridge, **values(predicted)})
    kernel_seconds = time.perf_counter() - started
    picked = {kind: max((r for r in rows if r["map"] == kind), key=lambda r: r["valid"]) for kind in ("linear", "kernel")}
    log.info("split %d: linear %s | kernel %s", cfg.eval.seed, picked["linear"], picked["kernel"])
    return {"split_seed": cfg.eval.seed, "n_known": int(len(known)), "n_new": int(len(new)), "ease_l2": l2, "grid": rows,
            "picked": picked, "seconds": {"linear": round(linear_seconds, 2), "kernel": round(kernel_seconds, 2)}}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    defaults = PipelineConfig().train
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="ml-100k")
    p.add_argument("--split-seeds", default="42", help="comma list of eval.seed values (cold splits)")
    p.add_argument("--titles-only", action="store_true", help="the catalog cut to title, genres and poster")
    p.add_argument("--ease-l2", type=float, default=1000.0, help="EASE's ridge (the block's usual pick on cold)")
    p.add_argument("--sharpness", default=",".join(f"{v:g}" for v in defaults.item_item_content_sharpness))
    p.add_argument("--ridges", default=",".join(f"{v:g}" for v in defaults.item_item_content_l2))
    p.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    from recsys.paths import shared_data_dir

    config_path = DEFAULT_CONFIGS[args.dataset]
    sharpness = [float(v) for v in args.sharpness.split(",")]
    ridges = [float(v) for v in args.ridges.split(",")]
    splits = []
    for seed in (int(s) for s in args.split_seeds.split(",")):
        cfg = load_config(config_path, [f"data.movielens={shared_data_dir() / args.dataset}", f"eval.seed={seed}", *args.overrides])
        catalog, interactions = load_dataset(cfg.data)
        if args.titles_only:
            catalog = catalog.select([c for c in TITLES_ONLY if c in catalog.columns])
        features = build_item_features(catalog, cfg.encoders, store=FeatureStore(cfg.encoders.cache_dir), show_progress=False)
        splits.append(one_split(cfg, catalog, interactions, features, args.ease_l2, sharpness, ridges))
    label = args.dataset + ("-titles" if args.titles_only else "")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"content_map_{label}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"dataset": label, "command": " ".join(sys.argv), "splits": splits}, indent=1))
    tmp.replace(out)
    print(f"\n| {label} cold split | linear map (picked on valid): valid / test | kernel map (picked on valid): valid / test | test gain |")
    print("|---|---|---|---:|")
    for s in splits:
        lin, ker = s["picked"]["linear"], s["picked"]["kernel"]
        print(f"| {s['split_seed']} | ridge {lin['ridge']:g}: {lin['valid']:.4f} / {lin['test']:.4f} | sharpness {ker['sharpness']:g}, "
              f"ridge {ker['ridge']:g}: {ker['valid']:.4f} / {ker['test']:.4f} | {ker['test'] - lin['test']:+.4f} |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
