"""Training (issue 23, figure 2): how fast recsys trains, where the time goes, and how soon it beats its peers.

The machine is shared, so every figure is measured in one run and read as a ratio or a comparison:

1. **Seconds per epoch and interactions per second** of the default recipe's first model
   (`RecipeFit.shaped`: the data's shape picks attention/next_item on time-ordered ml-100k,
   mean/all_but_one with the EASE teacher on ml-1m), on the development split (loo, `eval.seed` 42):
   one epoch as a plain loop (bench/profile_epoch.py's `EpochRun`: the Lightning module's training step,
   its optimizer and weight average, no validation), and the epochs of the Lightning fit below
   (validation included).
2. **Where the time goes**: the wall time of each part of a step over one epoch (user tower, item tower,
   negatives, teacher, the rest of the loss, backward, optimizer, weight average, data loading) and the
   top operators by self CPU time over 10 profiled steps (torch.profiler).
3. **Time to quality**: validation NDCG@10 against wall time, on the same validation queries ranked by
   the same `RankingJudge` (`prepare_training_data`: what the recipe early-stops on), for recsys's base fit
   (`TowersFit`, per-epoch `history` with its elapsed seconds; EASE teacher and model setup included) and
   each peer (bench/peers.py): popularity, content-kNN (text, image, both), EASE over its ridge grid, ALS
   per iteration over its grid, SASRec per epoch. Peer clocks exclude their validation passes; recsys's
   includes its per-epoch validation (it is part of its fit). Runs are capped by wall time
   (`--recsys-minutes`, `--sasrec-minutes`) so the script ends within 15 minutes per dataset on 2 cores.
   The plot is docs/img/training_time_to_quality_<dataset>.png.

The whole default `recsys train` (every recipe trial, the item-item block, the refit) is not run here: it is
the 30-minute budget itself, over this script's 15; it is timed on its own (command in training_notes.md).

Writes bench/results/training_<dataset>.json and re-renders the `training` section of docs/benchmarks.md
from every training_*.json present (both datasets in one section).
Run: `python bench/training.py --dataset ml-100k` (then `--dataset ml-1m`); `make bench-training`.
Final numbers under the shared lock: `flock /work/bench.lock .venv/bin/python bench/training.py --dataset ml-1m`.
`--quick`: a smoke run (caps of seconds, 3 profiled steps, no doc).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.report import RESULTS, machine, write_doc_section, write_result  # noqa: E402  (first: sets the environment)
from bench.profile_epoch import EpochRun, Phases, recipe_base  # noqa: E402

log = logging.getLogger("bench.training")

CONFIGS = {"ml-100k": "pipelines/configs/ml100k.yaml", "ml-1m": "pipelines/configs/ml1m.yaml"}
# Wall-time caps (minutes): recsys's base fit and SASRec; the targets for passing the best peer.
CAPS = {"ml-100k": {"recsys": 5.5, "sasrec": 2.0}, "ml-1m": {"recsys": 6.0, "sasrec": 1.0}}
TARGET_MINUTES = {"ml-100k": 5.0, "ml-1m": 15.0}
RECIPE_TARGET_MINUTES = 30.0  # the whole default `recsys train` on ml-1m
METRIC = "ndcg@10"
IMG = ROOT / "docs" / "img"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------- 1, 2: epoch and profile


def measure_epoch(cfg, features, data, profile_steps: int, rows: int, parts_steps: int) -> dict[str, Any]:
    run = EpochRun.build(cfg, features, data)
    for i, batch in enumerate(run.batches()):  # warm-up: allocator, thread pools
        run.step(batch)
        if i == 2:
            break
    seconds, steps = run.epoch()
    phases = Phases()
    with run.instrumented(phases):
        timed_seconds, timed_steps = run.epoch(phases, parts_steps)
    split = phases.split()
    _, top = run.profile_steps(profile_steps, rows)
    log.info("plain epoch: %d steps in %.2fs (%.0f interactions/s); parts %s", steps, seconds, run.n_interactions / seconds,
             {k: round(v, 2) for k, v in split.items()})
    return {
        "steps": steps, "batch_size": cfg.train.batch_size, "interactions": run.n_interactions,
        "plain_epoch_seconds": round(seconds, 3), "interactions_per_second": round(run.n_interactions / seconds, 1),
        "instrumented_seconds": round(timed_seconds, 3), "instrumented_steps": timed_steps,
        "parts_seconds": {k: round(v, 3) for k, v in split.items()},
        "parts_share": {k: round(v / timed_seconds, 4) for k, v in split.items()},
        "setup_seconds": {k: round(v, 3) for k, v in run.setup_seconds.items()},
        "profiled_steps": profile_steps, "top_operators": top,
    }


# --------------------------------------------------------------------------- 3: time to quality


class Clock:
    """Wall seconds of a fit with its validation passes taken out (`paused`)."""

    def __init__(self) -> None:
        self.started, self.paused_s = time.perf_counter(), 0.0

    def now(self) -> float:
        return time.perf_counter() - self.started - self.paused_s

    def pause(self):
        clock = self

        class _Paused:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                clock.paused_s += time.perf_counter() - self.t

        return _Paused()


def recsys_curve(cfg, features, data, minutes: float) -> dict[str, Any]:
    """The recipe's base fit (TowersFit), capped at `minutes`: validation per epoch against wall time
    from the start of the fit (EASE teacher and model setup included)."""
    from recsys.model.fitting import TowersFit
    from recsys.model.recipe import with_values

    data._teachers.clear()  # the fit pays for its teacher, as `recsys train` does
    capped = with_values(cfg, {"train.max_minutes": minutes})
    started = time.perf_counter()
    result = TowersFit(capped, None, show_progress=False).fit(features, data)
    total = time.perf_counter() - started
    setup = total - result.train_seconds  # before trainer.fit: the teacher, the model, the windows
    key = result.valid_metric_name
    points = [{"epoch": e["epoch"] + 1, "seconds": round(e["seconds"] + setup, 2), METRIC: e[key]}
              for e in result.history if key in e and "seconds" in e]
    ends = [e["seconds"] for e in result.history if key in e and "seconds" in e]
    epoch_s = [b - a for a, b in zip([0.0, *ends], ends)]
    log.info("recsys: %d epochs in %.0fs, best %.4f at epoch %d", result.epochs_run, total, result.best_metric, result.best_epoch + 1)
    block = None
    if cfg.model.item_item == "ease":  # what the recipe adds to any towers it keeps: the item-item block's search
        from recsys.model.item_item_fit import ItemItemFit
        from recsys.model.recipe import Fitted

        started = time.perf_counter()
        blended = ItemItemFit(Fitted(result), cfg).fit(features, data)
        block_s = time.perf_counter() - started
        block = {"seconds": round(total + block_s, 2), "block_seconds": round(block_s, 1), METRIC: blended.best_metric,
                 "kept": bool(blended.item_item.get("kept"))}
        log.info("recsys + item-item block: %.4f after %.0fs more", blended.best_metric, block_s)
    return {"points": points, "setup_seconds": round(setup, 2), "seconds": round(total, 1), "epochs": len(points),
            "cap_minutes": minutes, "stopped": "early stop" if total < minutes * 60 else "time cap",
            "lightning_epoch_seconds": round(statistics.median(epoch_s), 3) if epoch_s else None,
            "best": max((p[METRIC] for p in points), default=None), "block": block}


def peer_curves(data, split, catalog, features, judge, sasrec_minutes: float, als_iterations: int, quick: bool) -> dict[str, Any]:
    """Each peer's validation value against its own fit time (and the time of its whole search so far)."""
    from bench.peers import PEERS, PeerData, SASRecParams, fit_als, train_sasrec
    from recsys.model.train import item_index_of
    import numpy as np

    index = item_index_of(np.asarray(features.item_ids))
    peer_data = PeerData(split.train, index, catalog=catalog, features=features)

    def score(scorer) -> float:
        return float(judge.evaluate(scorer, (10,))[METRIC])

    out: dict[str, Any] = {}
    for name in ("popularity", "knn_text", "knn_image", "knn_both"):
        if name.startswith("knn_") and name != "knn_both" and getattr(features, name[4:]) is None:
            continue
        started = time.perf_counter()
        scorer = PEERS[name].fit(peer_data, {}, 0)
        seconds = time.perf_counter() - started
        out[name] = {"kind": "one fit", "points": [{"seconds": round(seconds, 3), "search_seconds": round(seconds, 3), METRIC: score(scorer)}]}
    # EASE over its ridge grid (the Gram spectrum is computed once, by the first point).
    points, search = [], 0.0
    for params in PEERS["ease"].grid[: 1 if quick else None]:
        started = time.perf_counter()
        scorer = PEERS["ease"].fit(peer_data, params, 0)
        seconds = time.perf_counter() - started
        search += seconds
        points.append({"l2": params["l2"], "seconds": round(seconds, 3), "search_seconds": round(search, 3), METRIC: score(scorer)})
    out["ease"] = {"kind": "ridge grid", "points": points}
    # ALS per iteration, for each point of its grid.
    points, search = [], 0.0
    for params in PEERS["als"].grid[: 1 if quick else None]:
        clock = Clock()

        def on_iteration(i, scorer, params=params, clock=clock):
            with clock.pause():
                points.append({"factors": params["factors"], "regularization": params["regularization"], "iteration": i,
                               "seconds": round(clock.now(), 3), "search_seconds": round(search + clock.now(), 3), METRIC: score(scorer)})

        fit_als(peer_data, {**params, "iterations": 2 if quick else als_iterations}, 0, on_iteration=on_iteration)
        search += clock.now()
    out["als"] = {"kind": "iterations x grid", "points": points}
    # SASRec per epoch, capped by time.
    points, clock = [], Clock()
    params = SASRecParams()  # quality.py's grid tries 40 and 80 epochs: one run of 80 covers both

    def on_epoch(epoch, scorer):
        with clock.pause():
            points.append({"epoch": epoch, "seconds": round(clock.now(), 2), "search_seconds": round(clock.now(), 2), METRIC: score(scorer)})
            log.info("sasrec epoch %d: %.4f at %.0fs", epoch, points[-1][METRIC], clock.now())
        return clock.now() < sasrec_minutes * 60

    train_sasrec(peer_data, params, 0, on_epoch=on_epoch)
    out["sasrec"] = {"kind": "epochs", "points": points, "cap_minutes": sasrec_minutes,
                     "stopped": "time cap" if points and points[-1]["epoch"] < params.epochs else "all epochs"}
    for name, peer in out.items():
        best = max(peer["points"], key=lambda p: p[METRIC])
        peer["best"] = best[METRIC]
        peer["best_seconds"] = best["seconds"]
        peer["best_search_seconds"] = best["search_seconds"]
        log.info("%s: best %.4f (fit %.1fs, search %.1fs)", name, best[METRIC], best["seconds"], best["search_seconds"])
    return out


def passing(recsys: dict, peers: dict) -> dict[str, Any]:
    """The best peer (by its best validation value) and the first recsys epoch above it."""
    name = max(peers, key=lambda n: peers[n]["best"])
    bar = peers[name]["best"]
    first = next((p for p in recsys["points"] if p[METRIC] > bar), None)
    block = recsys.get("block")
    block_passes = block is not None and block[METRIC] > bar
    return {"best_peer": name, "best_peer_value": bar, "best_peer_seconds": peers[name]["best_seconds"],
            "best_peer_search_seconds": peers[name]["best_search_seconds"],
            "recsys_passes_at_seconds": first["seconds"] if first else None,
            "recsys_passes_at_epoch": first["epoch"] if first else None,
            # the towers after their whole base fit, plus the block: what `recsys train` ships without any trial
            "recsys_with_block_passes_at_seconds": block["seconds"] if block_passes else None}


# --------------------------------------------------------------------------- plot and doc


def plot(dataset: str, payload: dict) -> Path:
    from recsys.plots import COLORS, _color, _figure

    fig = _figure(8, 4.2)
    ax = fig.subplots()
    rec = payload["curves"]["recsys"]
    ax.plot([p["seconds"] for p in rec["points"]], [p[METRIC] for p in rec["points"]], marker="o", ms=3, lw=2.2,
            color=COLORS["recsys"], label="recsys (recipe base fit, per epoch)")
    if rec.get("block"):
        ax.scatter([rec["block"]["seconds"]], [rec["block"][METRIC]], s=90, marker="*", color=COLORS["recsys"], zorder=4,
                   label="recsys base fit + item-item block")
    for i, (name, peer) in enumerate(payload["curves"]["peers"].items()):
        pts = peer["points"]
        color = COLORS.get(name, COLORS["content_knn"] if name.startswith("knn") else _color(name, i))
        if name == "als":  # one line per grid point
            for j, key in enumerate(sorted({(p["factors"], p["regularization"]) for p in pts})):
                line = [p for p in pts if (p["factors"], p["regularization"]) == key]
                ax.plot([p["seconds"] for p in line], [p[METRIC] for p in line], lw=1, alpha=0.9 if j == 0 else 0.5,
                        color=color, label="ALS per iteration (each grid point)" if j == 0 else None)
        elif name == "sasrec":
            ax.plot([p["seconds"] for p in pts], [p[METRIC] for p in pts], lw=1.2, color=color, label="SASRec per epoch")
        else:
            marker = {"ease": "s", "popularity": "v"}.get(name, "^")
            ax.scatter([p["seconds"] for p in pts], [p[METRIC] for p in pts], s=22, marker=marker, color=color,
                       label="EASE (each ridge)" if name == "ease" else name, zorder=3)
    bar = payload["passing"]
    ax.axhline(bar["best_peer_value"], color="#555", lw=0.8, ls="--", label=f"best peer ({bar['best_peer']})")
    ax.axvline(TARGET_MINUTES[dataset] * 60, color="#c0504d", lw=0.8, ls=":", label=f"target: {TARGET_MINUTES[dataset]:.0f} min")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("wall seconds of the fit (log scale above 1 s; 2 shared cores)")
    ax.set_ylabel(f"validation {METRIC}")
    ax.set_title(f"{dataset}: time to quality (loo, eval.seed 42, {payload['validation_users']} validation users)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    IMG.mkdir(parents=True, exist_ok=True)
    path = IMG / f"training_time_to_quality_{dataset}.png"
    fig.savefig(path)
    return path


def _mmss(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def render_dataset(dataset: str, p: dict) -> str:
    e, rec, bar = p["epoch"], p["curves"]["recsys"], p["passing"]
    m = p["machine"]
    lines = [
        f"#### {dataset}",
        "",
        f"`{m['command']}` on {m['cores']} cores, {m['date']}, load average {p['load_start']} at the start and "
        f"{p['load_end']} at the end (other jobs share these cores). Data: {p['shape']}. The recipe's base model: "
        f"{p['base']}.",
        "",
        "| | value |",
        "| --- | --- |",
        f"| one epoch, plain loop (no validation) | {e['plain_epoch_seconds']:.2f} s ({e['steps']} steps of {e['batch_size']} windows) |",
        f"| interactions per second (training interactions / plain epoch) | {e['interactions_per_second']:,.0f} ({e['interactions']:,} per epoch) |",
        f"| one epoch in the Lightning fit (validation included; median) | {rec['lightning_epoch_seconds']:.2f} s "
        f"({rec['lightning_epoch_seconds'] / e['plain_epoch_seconds']:.2f}x the plain loop) |",
    ]
    for what, seconds in e["setup_seconds"].items():
        lines.append(f"| {what} | {seconds:.2f} s |")
    lines += ["", f"Where a step's wall time goes ({e['instrumented_steps']} instrumented steps, "
              f"{e['instrumented_seconds']:.2f} s; backward is the whole backward pass, of every part):", "",
              "| part | seconds | share |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v:.2f} | {e['parts_share'][k]:.0%} |" for k, v in e["parts_seconds"].items()]
    lines += ["", f"Top operators by self CPU time ({e['profiled_steps']} profiled steps):", "",
              "| operator | ms per step | share |", "| --- | --- | --- |"]
    lines += [f"| `{o['operator']}` | {o['self_cpu_ms']:.1f} | {o['share']:.0%} |" for o in e["top_operators"][:8]]
    lines += ["", f"Time to quality (validation {METRIC}, {p['validation_users']} validation users, the same "
              "`RankingJudge` for every model; seconds of each fit, peers' validation passes excluded; recsys capped at "
              f"{rec['cap_minutes']} min ({rec['stopped']}), SASRec at {p['curves']['peers']['sasrec']['cap_minutes']} min "
              f"({p['curves']['peers']['sasrec']['stopped']})):", "",
              "| model | best valid | its fit | its whole search | runs |", "| --- | --- | --- | --- | --- |"]
    rec_best = max(rec["points"], key=lambda q: q[METRIC]) if rec["points"] else None
    if rec_best:
        lines.append(f"| recsys (base fit) | {rec_best[METRIC]:.4f} | {_mmss(rec_best['seconds'])} (epoch {rec_best['epoch']}) | "
                     f"{_mmss(rec['seconds'])} | {rec['epochs']} epochs |")
    if rec.get("block"):
        b = rec["block"]
        lines.append(f"| recsys (base fit + item-item block{'' if b['kept'] else ', not kept'}) | {b[METRIC]:.4f} | "
                     f"{_mmss(b['seconds'])} (block search {_mmss(b['block_seconds'])}) | {_mmss(b['seconds'])} | 1 search |")
    for name, peer in sorted(p["curves"]["peers"].items(), key=lambda kv: -kv[1]["best"]):
        lines.append(f"| {name} | {peer['best']:.4f} | {_mmss(peer['best_seconds'])} | {_mmss(peer['best_search_seconds'])} | "
                     f"{peer['kind']}: {len(peer['points'])} |")
    target = TARGET_MINUTES[dataset] * 60
    at = bar["recsys_passes_at_seconds"]
    with_block = bar.get("recsys_with_block_passes_at_seconds")
    met = at is not None and at <= target
    met_with_block = with_block is not None and with_block <= target
    verdict = (f"recsys first passes the best peer ({bar['best_peer']}, {bar['best_peer_value']:.4f}) at "
               f"**{_mmss(at)}** (epoch {bar['recsys_passes_at_epoch']})" if at is not None else
               f"recsys does **not** pass the best peer ({bar['best_peer']}, {bar['best_peer_value']:.4f}) within its "
               f"{rec['cap_minutes']} min cap (best {rec['best']:.4f})")
    if rec.get("block"):
        verdict += ("; with the item-item block searched after the base fit (what `recsys train` ships before any trial) "
                    f"it is above it at **{_mmss(with_block)}**" if with_block is not None else
                    "; with the item-item block after the base fit it is still below it")
    lines += ["", f"{verdict}; target {TARGET_MINUTES[dataset]:.0f} min: **{'met' if met or met_with_block else 'not met'}**"
              f"{' (with the block)' if met_with_block and not met else ''}.", "",
              f"![time to quality, {dataset}](img/training_time_to_quality_{dataset}.png)", ""]
    return "\n".join(lines)


def render_section(results: dict[str, dict], notes: str = "") -> str:
    lines = [
        "### 2. Training (`make bench-training`)",
        "",
        "`bench/training.py --dataset ml-100k|ml-1m`: seconds per epoch and interactions per second of the default "
        "recipe's first model (`RecipeFit.shaped`: the choices the data's shape makes), a profile of one epoch, and "
        "validation NDCG@10 against wall time for that fit and every peer, on the development split (loo, `eval.seed` 42), "
        "all in one run per dataset. The whole default `recsys train` on ml-1m (target: 30 minutes) is timed on its own "
        "(it runs for `train.budget_minutes`, 30, beyond this script's 15): see the notes below.",
        "",
    ]
    for dataset in ("ml-100k", "ml-1m"):
        if dataset in results:
            lines.append(render_dataset(dataset, results[dataset]))
        else:
            lines += [f"#### {dataset}", "", f"Not run yet (`python bench/training.py --dataset {dataset}`).", ""]
    if notes:
        lines += [notes, ""]
    return "\n".join(lines)


NOTES_FILE = RESULTS / "training_notes.md"  # hand-written reading of the numbers, kept across re-renders


def rerender() -> None:
    results = {}
    for dataset in CONFIGS:
        path = RESULTS / f"training_{dataset}.json"
        if path.exists():
            results[dataset] = json.loads(path.read_text())
            plot(dataset, results[dataset])
    notes = NOTES_FILE.read_text() if NOTES_FILE.exists() else ""
    write_doc_section("training", render_section(results, notes))


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=tuple(CONFIGS), default="ml-100k")
    p.add_argument("--recsys-minutes", type=float, default=None, help="cap of recsys's base fit (default per dataset)")
    p.add_argument("--sasrec-minutes", type=float, default=None, help="cap of SASRec's training (default per dataset)")
    p.add_argument("--als-iterations", type=int, default=30)
    p.add_argument("--profile-steps", type=int, default=10)
    p.add_argument("--parts-steps", type=int, default=20, help="steps of the instrumented run that splits a step into parts")
    p.add_argument("--rows", type=int, default=12, help="top operators kept")
    p.add_argument("--quick", action="store_true", help="smoke run: caps of seconds, first grid points, no doc or JSON")
    p.add_argument("--render-only", action="store_true", help="re-render the doc section from the JSON files")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("lightning", "pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.render_only:
        rerender()
        return {}
    caps = dict(CAPS[args.dataset])
    if args.quick:
        caps = {"recsys": 0.5, "sasrec": 0.2}
    caps["recsys"] = args.recsys_minutes or caps["recsys"]
    caps["sasrec"] = args.sasrec_minutes or caps["sasrec"]
    log.info("caps: recsys base fit %.1f min, SASRec %.1f min (wall time)", caps["recsys"], caps["sasrec"])

    from recsys.model.recipe import DataShape
    from recsys.paths import shared_data_dir

    started, load_start = time.perf_counter(), _load()
    cfg, features, data, split, catalog = recipe_base(
        ROOT / CONFIGS[args.dataset], {"data.movielens": str(shared_data_dir() / args.dataset), "eval.seed": 42})
    judge = data.valid
    shape = DataShape.of(features, data)
    base = (f"{cfg.model.user_pooling} pooling, {cfg.train.objective}, max_history {cfg.model.max_history}, dim {cfg.model.dim}, "
            f"batch {cfg.train.batch_size}, {cfg.train.num_uniform_negatives} uniform negatives, teacher {cfg.train.teacher}, "
            f"ema {cfg.train.ema_decay}, modalities {', '.join(cfg.model.modalities)}")
    log.info("data: %s; base model: %s", shape.describe(), base)

    epoch = measure_epoch(cfg, features, data, 3 if args.quick else args.profile_steps, args.rows, args.parts_steps)
    recsys = recsys_curve(cfg, features, data, caps["recsys"])
    peers = peer_curves(data, split, catalog, features, judge, caps["sasrec"], args.als_iterations, args.quick)
    payload = {
        "figure": "training", "dataset": args.dataset, "machine": machine(), "load_start": load_start, "load_end": _load(),
        "threads": __import__("torch").get_num_threads(), "shape": shape.describe(), "base": base,
        "validation_users": len(judge.queries), "caps_minutes": caps,
        "targets_minutes": {"pass_best_peer": TARGET_MINUTES[args.dataset], "recipe_ml1m": RECIPE_TARGET_MINUTES},
        "epoch": epoch, "curves": {"recsys": recsys, "peers": peers}, "passing": passing(recsys, peers),
        "seconds": round(time.perf_counter() - started, 1),
    }
    log.info("passing: %s; whole run %.0fs", payload["passing"], payload["seconds"])
    if args.quick:
        print(json.dumps(payload["passing"]))
        return payload
    write_result(f"training_{args.dataset}", payload)
    rerender()  # the plots and the doc section, from every training_*.json
    return payload


if __name__ == "__main__":
    main()
