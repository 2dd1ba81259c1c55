"""Benchmark (issue 23, figure 3): batch top-100 for every ml-1m user against the limit.

Why: `recsys recommend` (pipelines/recommend.py -> Recommender.from_bundle + write_recommendations) loads
a bundle, computes every known user's vector with the user tower, searches the item index chunk by chunk
and writes a resumable, atomic parquet. The least any batch job can do with the same model is the user
tower's forward for those users plus one exact faiss search (IndexFlatIP) of the same user matrix against
the same item matrix. This measures users/s of the library path divided by users/s of that limit, in the
same run (the machine is shared, so only the ratio is comparable across days). Target: >= 0.5.

Each measurement runs in its own subprocess (`--worker limit|library`), so its peak resident memory
(`ru_maxrss`) is its own; the limit and library runs alternate, `--repeats` times each, and the fastest
of each is kept. Timed: the limit from the loaded model and matrices (bundle loading is not part of it);
the library from `Recommender.from_bundle` (bundle read, checks, user vectors) to the finished parquet.
A run with `--exclude-seen` (a user's rated items never come back) is timed once beside it, and one more
library run under cProfile gives the breakdown of where its time goes.
The bundle is bench/report.py's ml1m_bundle() (hand ml-1m model shape, 3 epochs; built once, shared).
Writes bench/results/batch.json and the `batch` section of docs/benchmarks.md.
Run: `make bench-batch` (= `.venv/bin/python bench/batch.py [--repeats 3 --k 100]`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bench.report  # noqa: E402,F401  (sets the benchmarks' environment, inherited by the worker processes)

log = logging.getLogger("bench.batch")
TARGET = 0.5
SAMPLE_USERS = 50  # users whose top-k the limit and the library must agree on


def _rss_mb() -> dict:
    """Current and peak resident memory of this process, MiB."""
    status = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
    current = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return {"rss_mb": round(current / 1024, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


# ---------------------------------------------------------------------------------------------- workers


def worker_limit(bundle_dir: Path, k: int) -> dict:
    """User-tower forward for every user + one IndexFlatIP search over the same matrices."""
    import faiss
    import numpy as np
    import torch

    from recsys.bundle import load_bundle
    from recsys.data.histories import Histories
    from recsys.model.two_tower import retrieval_items, retrieval_queries

    after_imports = _rss_mb()
    bundle = load_bundle(bundle_dir)
    ids = np.asarray(bundle.features.item_ids)
    row_of = {v: r for r, v in enumerate(ids.tolist())}
    users = bundle.users
    histories = Histories([[row_of[i] for i in h] for h in users["history"].to_list()],
                          users["history_times"].to_list() if "history_times" in users.columns else None)
    items = retrieval_items(bundle.item_vectors, bundle.item_bias)
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(items)
    with torch.inference_mode():  # warm-up (thread pools, first-call allocations): the limit is a floor
        index.search(retrieval_queries(bundle.model.encode_histories(bundle.item_vectors, histories[:8])), k)
    after_load = _rss_mb()
    start = time.perf_counter()
    with torch.inference_mode():
        queries = retrieval_queries(bundle.model.encode_histories(bundle.item_vectors, histories))
    forward_s = time.perf_counter() - start
    scores, rows = index.search(queries, k)
    seconds = time.perf_counter() - start
    user_ids = users["user_id"].to_list()
    return {
        "users": len(user_ids), "items": int(index.ntotal), "dim": int(items.shape[1]),
        "seconds": seconds, "user_tower_s": forward_s, "search_s": seconds - forward_s,
        "faiss_threads": faiss.omp_get_max_threads(), "torch_threads": torch.get_num_threads(),
        "memory": {"after_imports": after_imports, "after_load": after_load, "end": _rss_mb()},
        "sample": {str(u): ids[rows[i]].tolist() for i, u in enumerate(user_ids[:SAMPLE_USERS])},
    }


# Where the library path's time goes: (label, file suffix, function name) of the profile rows reported.
PROFILE_ROWS = (
    ("load_bundle (read, sha256 checks, model)", "recsys/bundle.py", "load_bundle"),
    ("user histories to item rows (Python)", "recsys/recommender.py", "_known_histories"),
    ("user vectors (encode_histories)", "recsys/model/two_tower.py", "encode_histories"),
    ("text search rows", "recsys/recommender.py", "_load_text_search"),
    ("job fingerprint (batch_job)", "recsys/recommender.py", "batch_job"),
    ("faiss search + per-user filtering", "recsys/index/faiss_index.py", "_search_faiss"),
    ("index search + results to Python (Recommender._search)", "recsys/recommender.py", "_search"),
    ("parquet parts (write)", "recsys/resume.py", "write"),
    ("concatenate parts (finish)", "recsys/resume.py", "finish"),
    ("write_recommendations in all", "recsys/recommender.py", "write_recommendations"),
)


def profile_rows(profile) -> dict:
    """Cumulative seconds of the PROFILE_ROWS functions in a cProfile run."""
    import pstats

    stats = pstats.Stats(profile).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    out = {}
    for label, suffix, name in PROFILE_ROWS:
        cum = [v[3] for (f, _, n), v in stats.items() if n == name and f.endswith(suffix)]
        if cum:
            out[label] = round(max(cum), 3)
    return out


def worker_library(bundle_dir: Path, k: int, exclude_seen: bool, chunk_size: int, profile: bool = False) -> dict:
    """The library batch path, as `recsys recommend --k K` runs it: from_bundle + write_recommendations.
    With `profile`, under cProfile (slower; only for the breakdown)."""
    import cProfile

    import polars as pl

    from pipelines.recommend import run_recommend
    from recsys.recommender import Recommender

    after_imports = _rss_mb()
    profiler = cProfile.Profile() if profile else None
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        out = Path(tmp) / "recommendations.parquet"
        if profiler is not None:
            profiler.enable()
        start = time.perf_counter()
        recommender = Recommender.from_bundle(bundle_dir)
        load_s = time.perf_counter() - start
        after_load = _rss_mb()
        run_recommend(bundle_dir, out, k=k, exclude_seen=exclude_seen, chunk_size=chunk_size,
                      recommender=recommender, show_progress=False)
        seconds = time.perf_counter() - start
        if profiler is not None:
            profiler.disable()
        frame = pl.read_parquet(out)
    users = recommender.bundle.users["user_id"].to_list()
    head = frame.filter(pl.col("user_id").is_in(users[:SAMPLE_USERS])).sort("user_id", "rank")
    sample = {str(u): g["item_id"].to_list() for (u,), g in head.group_by("user_id", maintain_order=True)}
    return {
        "users": frame["user_id"].n_unique(), "rows": frame.height, "seconds": seconds, "load_s": load_s,
        "recommend_write_s": seconds - load_s, "exclude_seen": exclude_seen, "chunk_size": chunk_size,
        "memory": {"after_imports": after_imports, "after_load": after_load, "end": _rss_mb()},
        "sample": sample,
        **({"profile_s": profile_rows(profiler)} if profiler is not None else {}),
    }


def spawn(args: list[str]) -> dict:
    """Run this script as a worker subprocess; its last stdout line is its JSON result."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- parent


def agreement(a: dict, b: dict) -> float:
    """Mean share of the same item ids in two top-k lists of the same users (ties may reorder)."""
    shares = [len(set(a[u]) & set(b[u])) / max(len(a[u]), 1) for u in a if u in b]
    return round(sum(shares) / len(shares), 4) if shares else float("nan")


def run(bundle_dir: Path, k: int, repeats: int, chunk_size: int) -> dict:
    common = ["--bundle", str(bundle_dir), "--k", str(k)]
    limits, libraries = [], []
    for r in range(repeats):
        limits.append(spawn(["--worker", "limit", *common]))
        lim = limits[-1]
        log.info("limit   %d/%d: %d users in %.3fs (user tower %.3fs, search %.3fs), peak RSS %.0f MiB", r + 1,
                 repeats, lim["users"], lim["seconds"], lim["user_tower_s"], lim["search_s"],
                 lim["memory"]["end"]["peak_rss_mb"])
        libraries.append(spawn(["--worker", "library", "--chunk-size", str(chunk_size), *common]))
        lib = libraries[-1]
        log.info("library %d/%d: %d users in %.3fs (load + user vectors %.3fs, recommend + write %.3fs), peak RSS %.0f MiB",
                 r + 1, repeats, lib["users"], lib["seconds"], lib["load_s"], lib["recommend_write_s"],
                 lib["memory"]["end"]["peak_rss_mb"])
    excl = spawn(["--worker", "library", "--exclude-seen", "--chunk-size", str(chunk_size), *common])
    log.info("library --exclude-seen: %.3fs (recommend + write %.3fs)", excl["seconds"], excl["recommend_write_s"])
    profiled = spawn(["--worker", "library", "--profile", "--chunk-size", str(chunk_size), *common])
    log.info("library under cProfile: %.3fs; %s", profiled["seconds"], profiled["profile_s"])
    limit = min(limits, key=lambda x: x["seconds"])
    library = min(libraries, key=lambda x: x["seconds"])
    users = limit["users"]
    same = agreement(limit.pop("sample"), library["sample"])
    for x in (*limits, *libraries, excl):
        x.pop("sample", None)
    return {
        "users": users, "items": limit["items"], "dim": limit["dim"], "k": k,
        "limit": {**limit, "users_per_s": round(users / limit["seconds"], 1)},
        "library": {**library, "users_per_s": round(users / library["seconds"], 1)},
        "library_exclude_seen": {**excl, "users_per_s": round(users / excl["seconds"], 1)},
        "ratio": round(limit["seconds"] / library["seconds"], 3),
        # the two halves: user vectors (library: with the bundle load) and search-to-parquet
        "ratio_user_part": round(limit["user_tower_s"] / library["load_s"], 3),
        "ratio_search_part": round(limit["search_s"] / library["recommend_write_s"], 3),
        "ratio_exclude_seen": round(limit["seconds"] / excl["seconds"], 3),
        "all_seconds": {"limit": [round(x["seconds"], 3) for x in limits],
                        "library": [round(x["seconds"], 3) for x in libraries]},
        "top_k_agreement_sample": same,
        "profile": {"seconds_under_profiler": round(profiled["seconds"], 3), "cumulative_s": profiled["profile_s"]},
    }


def doc_section(payload: dict) -> str:
    m, s, lim, lib, ex = payload["machine"], payload["setup"], payload["limit"], payload["library"], payload["library_exclude_seen"]
    ratio = payload["ratio"]
    met = ratio >= TARGET
    lines = [
        "### 3. Batch recommendations (`make bench-batch`)",
        "",
        f"Users/s for top-{payload['k']} of all {payload['users']:,} ml-1m users over {payload['items']:,} items "
        f"(vectors {payload['dim']}-d with the bias column) through the library's batch path "
        "(`recsys recommend`: `Recommender.from_bundle`, then `write_recommendations`, chunks of "
        f"{lib['chunk_size']}, resumable parts, one atomic parquet) against the limit measured in the same run: the "
        "bundle model's user-tower forward (`encode_histories`) for the same users plus one exact faiss `IndexFlatIP` "
        "search of the same matrices. Each measurement is its own subprocess (peak RSS = its `ru_maxrss`); fastest of "
        f"{s['repeats']} alternating runs each. Bundle: `{s['bundle']}` ({s['bundle_note']}).",
        "",
        f"Command: `{m['command']}` ({m['cores']} cores, faiss {lim['faiss_threads']} / torch {lim['torch_threads']} "
        f"threads, {m['date']}, load average before the run {s['load_before']}).",
        "",
        "| path | seconds | users/s | peak RSS MiB | ratio to the limit |",
        "| --- | ---: | ---: | ---: | --- |",
        f"| limit: user tower ({lim['user_tower_s']:.2f} s) + one IndexFlatIP search ({lim['search_s']:.2f} s) | "
        f"{lim['seconds']:.2f} | {lim['users_per_s']:,.0f} | {lim['memory']['end']['peak_rss_mb']:,.0f} | 1 |",
        f"| library: load + user vectors ({lib['load_s']:.2f} s) + recommend and write ({lib['recommend_write_s']:.2f} s) | "
        f"{lib['seconds']:.2f} | {lib['users_per_s']:,.0f} | {lib['memory']['end']['peak_rss_mb']:,.0f} | "
        f"**{ratio:.2f}** (target >= {TARGET}: {'met' if met else 'not met'}) |",
        f"| library, `--exclude-seen` (one run) | {ex['seconds']:.2f} | {ex['users_per_s']:,.0f} | "
        f"{ex['memory']['end']['peak_rss_mb']:,.0f} | {payload['ratio_exclude_seen']:.2f} |",
        "",
        f"By halves: the user vectors run at {payload['ratio_user_part']:.2f} of the limit's (the library's include "
        f"reading and checking the bundle), the search-to-parquet part at {payload['ratio_search_part']:.2f} of the "
        f"limit's single search. Peak RSS includes the imports ({lib['memory']['after_imports']['rss_mb']:,.0f} MiB for the "
        f"library worker after importing, {lim['memory']['after_imports']['rss_mb']:,.0f} MiB for the limit's). "
        f"The library's top-{payload['k']} lists agree with the limit's on {payload['top_k_agreement_sample']:.1%} "
        f"of the items for the first {SAMPLE_USERS} users.",
    ]
    prof = payload["profile"]
    lines += [
        "",
        f"Where the library's time goes (one more run under cProfile, {prof['seconds_under_profiler']:.2f} s with the "
        "profiler's overhead; cumulative seconds, nested rows overlap):",
        "",
        "| part | seconds |",
        "| --- | ---: |",
        *[f"| {label} | {sec:.2f} |" for label, sec in prof["cumulative_s"].items()],
    ]
    spreads = {name: (max(v) - min(v)) / min(v) for name, v in payload["all_seconds"].items()}
    lines += [
        "",
        f"Repeats differed by up to {spreads['limit']:.0%} (limit) and {spreads['library']:.0%} (library); seconds "
        f"per repeat: limit {payload['all_seconds']['limit']}, library {payload['all_seconds']['library']}."
        + (f" The machine was busy (load average {float(s['load_before'].split()[0]):.1f} on {m['cores']} cores from "
           "other jobs), so a ratio is only as precise as that spread; both sides spend most of their time in the "
           "same `encode_histories` call, so a ratio near or above 1 means the library adds little beyond it."
           if float(s["load_before"].split()[0]) > m["cores"] else ""),
        "",
        f"`--exclude-seen` costs more ({ex['recommend_write_s']:.2f} s for recommend and write): the flat search "
        "fetches k + the longest history per user and filters each row with `np.isin`; masking seen items inside "
        "the search (a per-user selector, or scoring the catalog densely at this size) would cut that.",
    ]
    lines += payload.get("notes", [])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None, help="default: bench/report.py's ml1m_bundle()")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=1024, help="users per chunk (the CLI's default)")
    parser.add_argument("--name", default="batch", help="results/<name>.json and the doc section; "
                        "anything but 'batch' leaves docs/benchmarks.md alone")
    parser.add_argument("--worker", choices=("limit", "library"), help=argparse.SUPPRESS)
    parser.add_argument("--exclude-seen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:  # a measurement subprocess: one JSON line on stdout
        logging.basicConfig(level=logging.WARNING)
        if args.worker == "limit":
            out = worker_limit(args.bundle, args.k)
        else:
            out = worker_library(args.bundle, args.k, args.exclude_seen, args.chunk_size, args.profile)
        print(json.dumps(out))
        return None

    from bench.report import ML1M_BUNDLE, machine, ml1m_bundle, write_doc_section, write_result

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.bundle is None:
        log.info("bundle: ml1m_bundle() (trains it once if absent: several minutes)")
        args.bundle = ml1m_bundle()
    log.info("bundle %s; load average %s", args.bundle, load_before)
    result = run(args.bundle, args.k, args.repeats, args.chunk_size)
    bundle_note = ("bench/configs/hand_ml1m.yaml trained 3 epochs" if args.bundle.resolve() == ML1M_BUNDLE.resolve()
                   else "given with --bundle")
    payload = {
        "machine": machine(),
        "setup": {"bundle": os.path.relpath(args.bundle, ROOT), "bundle_note": bundle_note, "repeats": args.repeats,
                  "load_before": load_before, "target": TARGET},
        **result,
    }
    path = write_result(args.name, payload)
    log.info("wrote %s", path)
    if args.name == "batch":
        write_doc_section("batch", doc_section(payload))
        log.info("updated docs/benchmarks.md (batch)")
    log.info("ratio %.3f (target %.1f); user part %.3f, search part %.3f", payload["ratio"], TARGET,
             payload["ratio_user_part"], payload["ratio_search_part"])
    return payload


if __name__ == "__main__":
    main()
