"""Benchmark: exact flat vs HNSW item index on random normalised vectors.

Why: `IndexConfig.flat_max_items` decides when 'auto' switches to HNSW; this measures what that buys
(query throughput) and costs (build time, recall@k vs exact) on this machine.
Writes bench/results/index.json.  Run: `python bench/index.py [--n 100000 --dim 64 --queries 2000]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from recsys.config import IndexConfig
from recsys.index import ItemIndex

log = logging.getLogger("bench.index")


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run(n: int, dim: int, n_queries: int, k: int, batch: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    vectors = _unit(rng, n, dim)
    queries = _unit(rng, n_queries, dim)
    ids = np.arange(n, dtype=np.int64)
    results: dict = {}
    found: dict[str, np.ndarray] = {}
    for kind in ("flat", "hnsw"):
        cfg = IndexConfig(kind=kind)
        index, build_s = _timed(lambda: ItemIndex.build(vectors, ids, cfg))
        index.search(queries[:batch], k)  # warm-up

        def query_all() -> np.ndarray:
            return np.concatenate([index.search(queries[i : i + batch], k)[0] for i in range(0, n_queries, batch)])

        found[kind], query_s = _timed(query_all)
        results[kind] = {
            "build_s": round(build_s, 3),
            "query_s": round(query_s, 4),
            "qps": round(n_queries / query_s, 1),
            "config": cfg.model_dump(mode="json"),
        }
        log.info("%s: build %.2fs, %d queries in %.3fs (%.0f q/s)", kind, build_s, n_queries, query_s,
                 n_queries / query_s)
    exact = found["flat"]
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found["hnsw"].tolist(), exact.tolist())]))
    results["hnsw"][f"recall@{k}_vs_flat"] = round(recall, 4)
    results["hnsw_vs_flat_qps_ratio"] = round(results["hnsw"]["qps"] / results["flat"]["qps"], 2)
    results["setup"] = {
        "n_items": n, "dim": dim, "n_queries": n_queries, "k": k, "batch_size": batch, "seed": seed,
        "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
    }
    return results


def _write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "index.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    results = run(args.n, args.dim, args.queries, args.k, args.batch, args.seed)
    _write_json_atomic(args.out, results)
    log.info("wrote %s", args.out)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
