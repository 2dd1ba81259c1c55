"""Quality benchmark: recsys against every peer, on identical splits, in one run.

For each protocol (loo, cold) one split is made with the library (`make_split`, seed = eval.seed of
the recsys config), and every model is scored on it with the library's `evaluate`:

* peers (bench/peers.py) are fit on split.train; hyper-parameters are picked on the validation stage
  (history = train, target = valid item; whole catalog on loo, the held-out validation
  items among themselves on cold, exactly what recsys' early stopping ranks) by NDCG@10 from a small grid - never on test;
* recsys is trained with `pipelines.evaluate.evaluate_split` (fit on split.train, early stopping on
  split.valid) once per model seed (train.seed = base seed + i, or + i x K for an ensemble of K models, so
  repeats share no member); the split never changes;
* test: history = train + valid (build_queries "test"), seen items excluded; on the cold protocol
  the candidates are the held-out cold items. On loo and cold no model is refit on train + valid:
  every model, recsys included, scores the test with its train-only fit (models that read the history
  at scoring time - recsys, content-kNN, ALS fold-in - see the valid item too). The temporal split's
  validation is the latest window of time before the cut (`Split.refits`): there every model, peers
  and recsys alike, learns train + valid again with its picked settings before the test.

Stochastic peers (als, bpr, lightfm_*) are refit with the chosen hyper-parameters for every seed too;
deterministic ones (popularity, knn_*) run once. Multi-seed rows are mean ± standard error. Under each
table, recsys is paired with every model of the same run on the same test users (`paired_difference`):
the NDCG@10 difference with a 95% bootstrap interval over the users, the noise that "within noise" means.

Writes bench/results/quality_<dataset>.json (protocols from earlier runs that were not re-run are
kept) and regenerates this dataset's sections of docs/results.md; everything is one MLflow parent run
in experiment "quality-<dataset>" with a nested run per protocol/model.

Run:  python bench/quality.py --dataset ml-100k --protocols loo,cold --seeds 3
      python bench/quality.py --dataset ml-1m --peers popularity,als,bpr --skip-recsys
      python bench/quality.py --dataset ml-100k --quick          # smoke test: 1 grid point, 2 epochs
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.peers import PEERS, PeerData, timed_fit  # noqa: E402
from recsys.config import PipelineConfig, TrackingConfig, load_config  # noqa: E402
from recsys.data.readers import load_dataset  # noqa: E402
from recsys.data.splits import make_split  # noqa: E402
from recsys.encoders.features import build_item_features  # noqa: E402
from recsys.encoders.store import FeatureStore, atomic_write_bytes  # noqa: E402
from recsys.eval.protocol import RankingJudge, build_queries, evaluate  # noqa: E402
from recsys.model.train import item_index_of, item_rows, repeat_seeds  # noqa: E402
from recsys.paths import shared_data_dir  # noqa: E402
from recsys.tracking import Tracker  # noqa: E402

log = logging.getLogger("bench.quality")

DATASETS = ("ml-100k", "ml-1m")
DEFAULT_CONFIGS = {"ml-100k": ROOT / "pipelines/configs/ml100k.yaml", "ml-1m": ROOT / "pipelines/configs/ml1m.yaml"}
# The hand-written configs the recipe replaced (train.tune false), kept as the reference it must reach.
HAND_CONFIGS = {"ml-100k": ROOT / "bench/configs/hand_ml100k.yaml", "ml-1m": ROOT / "bench/configs/hand_ml1m.yaml"}
TITLES_ONLY = ("item_id", "title", "categories", "image")  # --titles-only: what many catalogs have
DEVELOPMENT_SPLIT = 42  # eval.seed of every split looked at while developing; any other seed is a reporting split
RESULTS_DIR = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "results.md"
COLUMNS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
SELECT_BY = "ndcg@10"
PAIRED_RESAMPLES = 2000


# --------------------------------------------------------------------------- statistics


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error (sample std / sqrt(n)); s.e. is None for a single value."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return float("nan"), None
    if arr.size == 1:
        return float(arr[0]), None
    return float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(arr.size))


def paired_difference(ours: np.ndarray, theirs: np.ndarray, resamples: int = PAIRED_RESAMPLES, seed: int = 0) -> dict[str, float]:
    """Mean of `ours - theirs` (per-query values on the same test queries, NaN = a query without a target)
    and its 95% percentile bootstrap interval, resampling the queries (users). Pairing removes what the
    users share (a hard user is hard for both), so a gap far smaller than either model's spread still shows.
    On cold, users share the few held-out items, which stay fixed: the interval is the noise of the users
    given those items; another split's items move the gap more."""
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    if ours.shape != theirs.shape:
        raise ValueError(f"paired_difference: the two models were scored on different queries ({ours.shape} vs {theirs.shape})")
    diff = (ours - theirs)[~(np.isnan(ours) | np.isnan(theirs))]
    if diff.size == 0:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "n_users": 0}
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 100):  # 100 resamples at a time: 6,040 users x 2,000 would be 97 MB of indices
        stop = min(start + 100, resamples)
        means[start:stop] = diff[rng.integers(0, diff.size, size=(stop - start, diff.size))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"diff": float(diff.mean()), "lo": float(lo), "hi": float(hi), "n_users": int(diff.size)}


def paired_with_peers(per_query: dict[str, np.ndarray]) -> dict[str, dict[str, dict[str, float]]]:
    """For each recsys row (recsys, recsys_hand) of this run: `paired_difference` against every other model."""
    ours = [name for name in per_query if name.startswith("recsys")]
    return {name: {other: paired_difference(per_query[name], values) for other, values in per_query.items() if other != name}
            for name in ours}


def judge_test(judge: RankingJudge, scorer, ks) -> tuple[dict[str, float], np.ndarray]:
    """What `evaluate` returns for `scorer` on the judge's queries, and each query's NDCG@10 (for the pairing)."""
    ranked = judge.rank(scorer, max(ks))
    return {**judge.metrics(ranked, ks), "n_users": len(judge.queries)}, judge.per_query(ranked, SELECT_BY)


def summarise(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Per-metric mean / se over seed runs (train_seconds included)."""
    keys = sorted({k for r in runs for k, v in r.items() if isinstance(v, (int, float))})
    out: dict[str, Any] = {"n_seeds": len(runs)}
    for key in keys:
        m, se = mean_se([r[key] for r in runs if key in r])
        out[key] = m
        if se is not None:
            out[f"{key}_se"] = se
    return out


# --------------------------------------------------------------------------- one protocol


def tune_and_test(
    spec, data: PeerData, valid_q, test_q, n_items: int, candidates, seeds: list[int], quick: bool, ks, tracker: Tracker,
    valid_candidates=None, test_data: PeerData | None = None, per_query: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Pick hyper-parameters on valid by NDCG@10, then test with one fit per seed: on `data` (train
    only), or on `test_data` when the split refits (train + valid). `per_query` receives each test query's
    NDCG@10 (the mean over seeds) under the peer's name.

    Validation ranks exactly what recsys' early stopping ranks: the whole catalog on loo, the held-out
    validation items among themselves on cold (`valid_candidates`)."""
    grid = spec.grid[:1] if quick else spec.grid
    tuning = []
    fits: dict[tuple[str, int], Any] = {}
    best = None
    for params in grid:
        scorer, seconds = timed_fit(spec, data, params, seeds[0])
        valid = evaluate(scorer, valid_q, n_items, ks=ks, candidates=valid_candidates)  # history = train
        tuning.append({"params": params, "valid": valid, "train_seconds": seconds})
        fits[(json.dumps(params, sort_keys=True), seeds[0])] = (scorer, seconds)
        if best is None or valid[SELECT_BY] > best["valid"][SELECT_BY]:
            best = tuning[-1]
        log.info("  %s valid %s=%.4f %s", spec.name, SELECT_BY, valid[SELECT_BY], params)
    params = best["params"]
    key = json.dumps(params, sort_keys=True)
    runs, values = [], []
    judge = RankingJudge(test_q, n_items, candidates)
    for seed in seeds if spec.stochastic else seeds[:1]:
        scorer, seconds = timed_fit(spec, test_data, params, seed) if test_data is not None else (
            fits.get((key, seed)) or timed_fit(spec, data, params, seed))
        metrics, ndcg = judge_test(judge, scorer, ks)
        log.info("evaluated %s on %d users: %s", spec.name, len(test_q), {k: round(v, 4) for k, v in metrics.items()})
        metrics["train_seconds"] = seconds
        runs.append(metrics)
        values.append(ndcg)
    if per_query is not None:
        per_query[spec.name] = np.mean(values, axis=0)
    tracker.log_params({f"hp.{k}": v for k, v in params.items()} | {"model": spec.name})
    for i, (p, r) in enumerate(zip(grid, tuning)):
        tracker.log_metrics({f"tune.{i}.valid.ndcg_at_10": r["valid"][SELECT_BY]})
    summary = summarise(runs)
    tracker.log_metrics({k.replace("@", "_at_"): v for k, v in summary.items()})
    return {
        "params": params,
        "valid": best["valid"],
        "tuning": tuning,
        "seeds": [r for r in runs],
        "seed_values": list(seeds if spec.stochastic else seeds[:1]),
        **summary,
    }


def run_recsys(cfg: PipelineConfig, split, features, seeds: list[int], tracker: Tracker, quick: bool,
               name: str = "recsys", config_name: str = "see recsys_config",
               per_query: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """recsys via the pipeline's own evaluate_split, once per model seed (the split is fixed). The
    config keeps its record of which fields it sets, so the recipe (train.tune) chooses the rest.
    `per_query` receives each test query's NDCG@10 (the mean over seeds) under `name`."""
    from pipelines.evaluate import evaluate_split
    from recsys.model.recipe import with_values

    runs, per_seed = [], []
    for seed in seeds:
        values = {"train.seed": seed, **({"train.epochs": 2, "train.budget_minutes": 1.0} if quick else {})}
        cfg_s = with_values(cfg, values).model_copy(update={"eval": cfg.eval.model_copy(update={"baselines": []})})
        with tracker.step(f"{split.protocol}/{name}/seed{seed}"):
            tracker.log_params({"train.seed": seed, "model": name})
            started = time.perf_counter()
            seed_values: dict[str, np.ndarray] = {}
            metrics = evaluate_split(cfg_s, split, features, tracker, show_progress=False, per_query=seed_values)["recsys"]
            metrics.setdefault("train_seconds", time.perf_counter() - started)
        log.info("  %s seed %d: %s", name, seed, {k: round(metrics[k], 4) for k in COLUMNS})
        runs.append(metrics)
        per_seed.append(seed_values["recsys"])
    if per_query is not None:
        per_query[name] = np.mean(per_seed, axis=0)
    summary = summarise(runs)
    tracker.log_metrics({k.replace("@", "_at_"): v for k, v in summary.items()})
    return {
        "params": {"config": config_name, "epochs_max": cfg.train.epochs if not quick else 2},
        "seeds": runs,
        "seed_values": seeds,
        **summary,
    }


# --------------------------------------------------------------------------- markdown


def _cell(row: dict, key: str, digits: int = 4) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    se = row.get(f"{key}_se")
    text = f"{value:.{digits}f}"
    return f"{text} ± {se:.{digits}f}" if se is not None else text


def render_section(dataset: str, protocol: str, block: dict, recsys_config: str | None = None) -> str:
    models = block["models"]
    best = {c: max((m.get(c, -1.0) for m in models.values()), default=None) for c in COLUMNS}
    lines = [
        f"### {dataset} · {protocol}",
        "",
        f"Split: {block['split']}. Test users: {block['n_test_users']}; candidates: {block['candidates']}.",
        *([f"Order within a user: {block['order']}."] if block.get("order") else []),
        f"Run {block['created']} on {block['machine']}{' (QUICK smoke run - not a result)' if block.get('quick') else ''}.",
        "",
        "| model | Recall@10 | NDCG@10 | Recall@20 | NDCG@20 | train s | seeds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in models.items():
        cells = []
        for c in COLUMNS:
            text = _cell(row, c)
            if best[c] is not None and row.get(c) == best[c]:
                text = f"**{text}**"
            cells.append(text)
        cells.append(_cell(row, "train_seconds", 1))
        cells.append(str(row.get("n_seeds", 1)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, against in block.get("paired", {}).items():
        if against:
            n_users = max(p["n_users"] for p in against.values())
            lines += ["", f"{name} paired with each model of this run on the same {n_users} test users: NDCG@10 difference "
                      f"({name} minus the model) and its 95% interval over {PAIRED_RESAMPLES} bootstrap resamples of the users"
                      + (" (the held-out items fixed)" if block.get("candidates", "").endswith("cold items") else "") + ": "
                      + "; ".join(f"{other} {p['diff']:+.4f} [{p['lo']:+.4f}, {p['hi']:+.4f}]" for other, p in against.items())
                      + "."]
    lines += ["", "Hyper-parameters picked on validation (NDCG@10, history = train, target = valid item; on cold the held-out "
              "validation items are ranked among themselves, as for recsys' early stopping):", ""]
    lines += ["| model | picked | valid NDCG@10 | grid |", "|---|---|---:|---|"]
    for name, row in models.items():
        if name.startswith("recsys"):
            seeds = row.get("seeds", [])
            valids = [r["best_valid"] for r in seeds if "best_valid" in r]
            epochs = ", ".join(str(r["best_epoch"]) for r in seeds if "best_epoch" in r)
            valid = f"{sum(valids) / len(valids):.4f}" if valids else "–"
            config = row.get("params", {}).get("config") or recsys_config or "see above"
            picked, grid = f"config `{config}`, best epochs {epochs or '–'}", "one hand-written config per dataset"
            recipes = [r["recipe"] for r in seeds if r.get("recipe")]
            if recipes:  # train.tune: the recipe chose on this split's validation
                picked += "; the recipe chose per seed: " + "; ".join(recipes)
                fits = [r.get("recipe_fits", 0) for r in seeds]
                grid = (f"the default recipe on validation ({', '.join(map(str, fits))} fits per seed), each choice kept "
                        "only if it wins on held-out validation users")
            blocks = [r for r in seeds if "item_item_kept" in r]
            if blocks:  # model.item_item: picked per seed on validation after the towers were trained
                towers = sum(r["item_item_towers_valid"] for r in blocks) / len(blocks)
                per_seed = "; ".join(
                    (f"pair window {r.get('item_item_pair_window', 0):g}"
                     + (f", users weighted by length^-{r['item_item_user_power']:g}" if r.get("item_item_user_power") else "")
                     + (f", popularity ridge {r['item_item_popularity_ridge']:g}" if r.get("item_item_popularity_ridge") else "")
                     + f", l2 {r['item_item_l2']:g}, "
                     f"decay {r['item_item_decay']:g}, weight {r['item_item_weight_relative']:g}"
                     + (f", content sharpness {r['item_item_content_sharpness']:g}" if "item_item_content_sharpness" in r else "")
                     + (f", content ridge {r['item_item_content_l2']:g}" if "item_item_content_l2" in r else "")
                     + (" (unit-scaled content)" if r.get("item_item_content_unit") else ""))
                    if r["item_item_kept"] else "not kept" for r in blocks
                )
                picked += f"; item-item block per seed: {per_seed} (towers alone: valid {towers:.4f})"
                grid += ("; the block's Gram shape (kept only if it wins on held-out validation users), pair window, ridge, decay, weight (and the new items' content map: sharpness, ridge) on "
                         "validation, after the towers are trained")
            lines.append(f"| {name} | {picked} | {valid} | {grid} |")
            continue
        grid = "; ".join(
            f"{json.dumps(t['params'], sort_keys=True)} → {t['valid'][SELECT_BY]:.4f}" for t in row.get("tuning", [])
        ) if len(row.get("tuning", [])) > 1 else "–"
        picked = json.dumps(row.get("params", {}), sort_keys=True) if row.get("params") else "–"
        lines.append(f"| {name} | `{picked}` | {row.get('valid', {}).get(SELECT_BY, float('nan')):.4f} | {grid} |")
    lines += ["", f"Command: `{block['command']}`", ""]
    return "\n".join(lines)


def update_doc(doc: Path, dataset: str, results: dict) -> None:
    """Replace this dataset's marked section of docs/results.md (other sections are kept)."""
    begin, end = f"<!-- quality:{dataset}:begin -->", f"<!-- quality:{dataset}:end -->"
    body = [
        begin,
        f"## Quality: {dataset}" + (f" (reporting split: eval.seed {results['split_seed']}, never used while developing)"
                                     if results.get("split_seed", DEVELOPMENT_SPLIT) != DEVELOPMENT_SPLIT else
                                     f" (development split: eval.seed {DEVELOPMENT_SPLIT})"),
        "",
        "Generated by `bench/quality.py` (do not edit by hand). Protocol: one split per protocol shared "
        "by every model; peers tuned on validation only; on loo and cold all models score test with their "
        "train-only fit, on temporal (validation = the window before the cut) every model learns train + valid "
        "again with its picked settings first (history = train + valid, seen items excluded). recsys: mean ± s.e. "
        f"over model seeds (config `{results.get('recsys_config')}`). Best per column in bold."
        + (f" Catalog cut to the columns {', '.join(results['catalog_columns'])} (`--titles-only`)." if results.get("catalog_columns") else ""),
        "",
    ]
    order = {"loo": 0, "cold": 1, "temporal": 2}
    for protocol in sorted(results["protocols"], key=lambda p: (order.get(p, 9), p)):
        body.append(render_section(dataset, protocol, results["protocols"][protocol], results.get("recsys_config")))
    body.append(end)
    section = "\n".join(body)
    text = doc.read_text() if doc.exists() else "# Results\n\nBenchmarks regenerate their own sections.\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(doc, text.encode())


# --------------------------------------------------------------------------- main


def _relative(path: Path) -> str:
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=DATASETS, default="ml-100k")
    p.add_argument("--protocols", default="loo,cold")
    p.add_argument("--seeds", type=int, default=3, help="model seeds for recsys and stochastic peers")
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma list of {sorted(PEERS)}")
    p.add_argument("--skip-recsys", action="store_true", help="no default recipe (peers, or --hand-config alone)")
    p.add_argument("--recsys-config", type=Path, default=None, help="default: the dataset's data-only config (the recipe chooses)")
    p.add_argument("--hand-config", action="store_true",
                   help="also score the hand-written config the recipe replaced (bench/configs/hand_*.yaml) as recsys_hand")
    p.add_argument("--split-seed", type=int, default=DEVELOPMENT_SPLIT,
                   help=f"eval.seed of the splits; {DEVELOPMENT_SPLIT} is the development split, any other a reporting "
                   "split (written to its own results file and section)")
    p.add_argument("--titles-only", action="store_true",
                   help="the catalog cut to item_id, title, categories and image (no plots, credits or other text), as many "
                   "shops' catalogs are; written to its own results file and section (<dataset>-titles)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override for recsys and the features, e.g. encoders.image.enabled=false")
    p.add_argument("--quick", action="store_true", help="smoke run: first grid point only, recsys 2 epochs")
    p.add_argument("--no-tracking", action="store_true")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--doc", type=Path, default=DOC)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("lightning", "pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    command = "python bench/quality.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise SystemExit(f"unknown peers {unknown}; choose from {sorted(PEERS)}")
    missing = [p for p in peers if not PEERS[p].available()]
    if missing:
        raise SystemExit(f"peers {missing} need the bench extra (implicit, lightfm): see bench/README.md")

    config_path = args.recsys_config or DEFAULT_CONFIGS[args.dataset]
    data_overrides = [f"data.movielens={shared_data_dir() / args.dataset}", f"eval.seed={args.split_seed}"]
    cfg = load_config(config_path, [*data_overrides, *args.overrides])
    hand_cfg = load_config(HAND_CONFIGS[args.dataset], [*data_overrides, *args.overrides]) if args.hand_config else None
    label = args.dataset + ("-titles" if args.titles_only else "") + (
        "" if args.split_seed == DEVELOPMENT_SPLIT else f"-split{args.split_seed}")
    seeds = repeat_seeds(cfg, max(1, args.seeds))
    ks = tuple(cfg.eval.k)

    catalog, interactions = load_dataset(cfg.data)
    if args.titles_only:
        catalog = catalog.select([c for c in TITLES_ONLY if c in catalog.columns])
        log.info("titles only: the catalog keeps %s", catalog.columns)
    features = build_item_features(
        catalog, cfg.encoders, store=FeatureStore(cfg.encoders.cache_dir), show_progress=False
    )
    item_index = item_index_of(np.asarray(features.item_ids))
    n_items = len(item_index)
    timeless = interactions["timestamp"].n_unique() == 1
    order_note = (
        "the data has no timestamps, so each user's order is a seeded random permutation standing in for time"
        if timeless else "by timestamp; ties in time broken in a seeded random order"
    )

    out_path = args.results_dir / f"quality_{label}.json"
    results: dict[str, Any] = json.loads(out_path.read_text()) if out_path.exists() else {}
    results.update({
        "dataset": args.dataset,
        "split_seed": args.split_seed,
        **({"catalog_columns": catalog.columns} if args.titles_only else {}),
        "recsys_config": _relative(config_path),
        "n_items": n_items,
        "n_interactions": interactions.height,
        "encoders": features.fingerprints,
    })
    results.setdefault("protocols", {})

    tracker = Tracker(TrackingConfig(enabled=not args.no_tracking, experiment=f"quality-{args.dataset}"), root=ROOT)
    started = time.perf_counter()
    with tracker.pipeline_run(f"quality-{args.dataset}", cfg, tags={"command": command, "quick": args.quick}):
        tracker.log_params({"bench.seeds": seeds, "bench.peers": ",".join(peers), "bench.protocols": ",".join(protocols)})
        for protocol in protocols:
            split = make_split(protocol, interactions, features.item_ids, cfg.eval)
            candidates = item_rows(split.candidate_items, item_index)
            valid_candidates = item_rows(split.meta.get("valid_candidate_items"), item_index)
            valid_q = build_queries(split, item_index, "valid")
            test_q = build_queries(split, item_index, "test")
            data = PeerData(split.train, item_index, catalog=catalog, features=features)
            test_data = PeerData(split.before_test(), item_index, catalog=catalog, features=features) if split.refits else None
            models: dict[str, Any] = {}
            per_query: dict[str, np.ndarray] = {}  # each model's NDCG@10 per test query, for the pairing
            log.info("%s: split %s, %d valid / %d test users", protocol, split.sizes(), len(valid_q), len(test_q))
            for name in peers:
                with tracker.step(f"{protocol}/{name}"):
                    models[name] = tune_and_test(PEERS[name], data, valid_q, test_q, n_items, candidates,
                                                 seeds, args.quick, ks, tracker, valid_candidates=valid_candidates,
                                                 test_data=test_data, per_query=per_query)
                log.info("%s %s test: %s", protocol, name, {k: round(models[name][k], 4) for k in COLUMNS})
            if not args.skip_recsys:
                with tracker.step(f"{protocol}/recsys"):
                    models["recsys"] = run_recsys(cfg, split, features, seeds, tracker, args.quick,
                                                  config_name=_relative(config_path), per_query=per_query)
            if hand_cfg is not None:  # --skip-recsys --hand-config: the hand config alone
                with tracker.step(f"{protocol}/recsys_hand"):
                    models["recsys_hand"] = run_recsys(hand_cfg, split, features, seeds, tracker, args.quick, "recsys_hand",
                                                       _relative(HAND_CONFIGS[args.dataset]), per_query=per_query)
            results["protocols"][protocol] = {
                "split": ", ".join(f"{k}={v}" for k, v in {**split.sizes(), **{k: v for k, v in split.meta.items() if np.isscalar(v)}}.items()),
                "order": order_note,
                "n_valid_users": len(valid_q),
                "n_test_users": len(test_q),
                "candidates": "whole catalog" if candidates is None else f"{len(candidates)} cold items",
                "seeds": seeds,
                "quick": args.quick,
                "command": command,
                "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
                "models": models,
                "paired": paired_with_peers(per_query),
            }
        # Re-read just before writing, so protocols run by a concurrent invocation (e.g. loo and cold
        # in two processes) are kept; only the protocols run here are replaced, and on the very same
        # split the models run here join those already there (peers and recsys may run apart).
        on_disk = json.loads(out_path.read_text()) if out_path.exists() else {}
        ran = {}
        for p in protocols:
            block, earlier = results["protocols"][p], on_disk.get("protocols", {}).get(p)
            if earlier and earlier.get("split") == block["split"] and not block.get("quick") and not earlier.get("quick"):
                block = {**block, "models": {**earlier["models"], **block["models"]},
                         "command": "; ".join(dict.fromkeys([earlier["command"], block["command"]]))}
            ran[p] = block
        results = {**on_disk, **results, "protocols": {**on_disk.get("protocols", {}), **ran}}
        args.results_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_path, json.dumps(results, indent=2, default=float).encode())
        update_doc(args.doc, label, results)
        tracker.log_artifact(out_path, "quality")
        tracker.log_artifact(args.doc, "quality")
        tracker.log_metrics({"bench_seconds": time.perf_counter() - started})
    log.info("wrote %s and %s in %.0fs", out_path, args.doc, time.perf_counter() - started)
    for protocol in protocols:
        print(render_section(label, protocol, results["protocols"][protocol], results.get("recsys_config")))
    return results


if __name__ == "__main__":
    main()
