"""Profile: where one training epoch of the two-tower model spends its time.

Runs the training step of the default recipe's first model (`RecipeFit.shaped`: the config after the
choices the data's shape makes, e.g. attention/next_item on ml-100k, mean/all_but_one with the EASE
teacher on ml-1m; one model, the towers only) over one epoch of its training windows, timed as a plain
loop (no Lightning, no validation; the weight average of `train.ema_decay` included), then profiles 10
steps with torch.profiler and prints the operators by self CPU time, and the wall time of each part of a
step (user tower, item tower, negatives, teacher, the rest of the loss, backward, optimizer, weight
average, data loading). Run it under another code tree to compare
(`PYTHONPATH=OTHER_TREE python bench/profile_epoch.py`), and with `RECSYS_THREADS=1` to see what the
second core buys. bench/training.py reuses these pieces for its figure.
Run: `python bench/profile_epoch.py [--config pipelines/configs/ml100k.yaml] [--rows 15]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import recsys  # noqa: F401  (sizes the thread pools before torch loads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

# The parts of a step, in the order a table lists them. "forward, rest" is the forward pass outside the
# named parts: the gathers that map items to rows, the logits product and the cross-entropy.
PHASES = ("data loading", "user tower", "item tower", "negatives", "teacher", "forward, rest", "backward",
          "optimizer", "weight average")


class Phases:
    """Wall seconds per named part of a step (perf_counter: CPU ops are synchronous), each part also a
    torch.profiler range. Parts may nest (the towers inside the forward pass)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        with record_function(name):
            started = time.perf_counter()
            try:
                yield
            finally:
                self.seconds[name] += time.perf_counter() - started

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            with self(name):
                return fn(*args, **kwargs)

        return timed

    def split(self) -> dict[str, float]:
        """Seconds of each of PHASES ("forward, rest" = forward minus the parts inside it)."""
        s = self.seconds
        inside = s["user tower"] + s["item tower"] + s["negatives"] + s["teacher"]
        out = {name: s[name] for name in PHASES if name != "forward, rest"}
        out["forward, rest"] = max(s["forward"] - inside, 0.0)
        return {name: out[name] for name in PHASES}


class _TimedTerm:
    def __init__(self, term, phases: Phases, label: str) -> None:
        self.term, self.name, self.weight = term, term.name, term.weight
        self._call = phases.wrap(label, term)

    def __call__(self, step):
        return self._call(step)


class _TimedSampler:
    def __init__(self, sampler, phases: Phases) -> None:
        self.candidates = phases.wrap("negatives", sampler.candidates)


@dataclass
class EpochRun:
    """One model's training step outside a Trainer: the Lightning module, its optimizer and windows."""

    cfg: Any  # PipelineConfig
    module: Any  # TwoTowerModule
    optimizer: torch.optim.Optimizer
    loader: Any  # the training DataLoader (shuffled windows)
    n_interactions: int  # training interactions: what one epoch reads
    setup_seconds: dict = field(default_factory=dict)

    @classmethod
    def build(cls, cfg, features, data) -> "EpochRun":
        """The model `TowersFit(cfg)` trains on `data` (its validation is not used)."""
        from dataclasses import replace

        from recsys.model.datamodule import SequenceDataModule
        from recsys.model.fitting import TowersFit

        data = replace(data, valid=None)  # training steps only; shares the teacher cache
        setup: dict[str, float] = {}
        if cfg.train.teacher == "ease":
            started = time.perf_counter()
            data.ease_teacher(cfg.train.teacher_l2, cfg.train.ease_max_items)
            setup["teacher (EASE weights, once per fit)"] = time.perf_counter() - started
        fit = TowersFit(cfg)
        torch.manual_seed(cfg.train.seed)
        model = fit.build(features, data)
        module = fit.module(model, features, data)
        module.log = lambda *a, **k: None  # outside a Trainer
        windows = SequenceDataModule(data.sequences, cfg.model.max_history, cfg.train.batch_size, cfg.train.seed, False)
        optimizer = module.configure_optimizers()
        module.on_fit_start()  # the weight average's copy, when train.ema_decay is set
        model.train()
        return cls(cfg, module, optimizer, windows.train_dataloader(), int(data.popularity.sum()), setup)

    def step(self, batch, phases: Phases | None = None) -> None:
        phases = phases or Phases()
        with phases("forward"):
            loss = self.module.training_step(batch, 0)
        with phases("backward"):
            self.optimizer.zero_grad()
            loss.backward()
        with phases("optimizer"):
            self.optimizer.step()
        with phases("weight average"):
            self.module.on_train_batch_end(None, batch, 0)

    def batches(self, phases: Phases | None = None) -> Iterator:
        """One epoch of batches, each fetch timed as "data loading"."""
        phases = phases or Phases()
        it = iter(self.loader)
        while True:
            with phases("data loading"):
                batch = next(it, None)
            if batch is None:
                return
            yield batch

    def epoch(self, phases: Phases | None = None, max_steps: int | None = None) -> tuple[float, int]:
        """(wall seconds, steps) of one full epoch (or its first `max_steps` steps), data loading included."""
        started, steps = time.perf_counter(), 0
        for batch in self.batches(phases):
            self.step(batch, phases)
            steps += 1
            if steps == max_steps:
                break
        return time.perf_counter() - started, steps

    @contextmanager
    def instrumented(self, phases: Phases) -> Iterator[None]:
        """Time the towers, the negative sampler and the loss terms as parts of the forward pass."""
        model, module = self.module.model, self.module
        tower = model.user_tower
        saved = (module.sampler, module.terms)
        model.item_vectors_and_bias = phases.wrap("item tower", model.item_vectors_and_bias)
        tower.forward = phases.wrap("user tower", tower.forward)
        tower.leave_one_out = phases.wrap("user tower", tower.leave_one_out)
        module.sampler = _TimedSampler(module.sampler, phases)
        module.terms = [_TimedTerm(term, phases, "teacher" if term.name == "distill" else term.name) for term in module.terms]
        try:
            yield
        finally:
            for obj, name in ((model, "item_vectors_and_bias"), (tower, "forward"), (tower, "leave_one_out")):
                del obj.__dict__[name]
            module.sampler, module.terms = saved

    def profile_steps(self, n_steps: int = 10, rows: int = 15) -> tuple[str, list[dict]]:
        """torch.profiler over `n_steps` steps: (the table by self CPU time, its top `rows` as dicts)."""
        batches = []
        for batch in self.batches():
            batches.append(batch)
            if len(batches) == n_steps:
                break
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch in batches:
                self.step(batch)
        averages = prof.key_averages()
        top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
        total = sum(e.self_cpu_time_total for e in averages) or 1.0
        table = [{"operator": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 1000 / len(batches), 2),
                  "share": round(e.self_cpu_time_total / total, 4), "calls_per_step": e.count / len(batches)} for e in top]
        return averages.table(sort_by="self_cpu_time_total", row_limit=rows), table


def recipe_base(config: str | Path, overrides: dict | None = None, split_protocol: str = "loo"):
    """(base config, features, TrainingData, split) of the default recipe's first fit on the development
    split (`eval.seed` of the config, 42 by default) of `split_protocol`: the data prepared as
    `fit_two_tower` prepares it, and the config after `RecipeFit.shaped`."""
    from recsys.config import load_config
    from recsys.data.readers import load_dataset
    from recsys.data.splits import make_split
    from recsys.encoders.features import build_item_features
    from recsys.encoders.store import FeatureStore
    from recsys.model.recipe import RecipeFit
    from recsys.model.train import item_index_of, item_rows, prepare_training_data

    cfg = load_config(config, {"tracking.enabled": False, **(overrides or {})})
    catalog, interactions = load_dataset(cfg.data)
    features = build_item_features(catalog, cfg.encoders, store=FeatureStore(cfg.encoders.cache_dir), show_progress=False)
    split = make_split(split_protocol, interactions, features.item_ids, cfg.eval)
    index = item_index_of(np.asarray(features.item_ids))
    data = prepare_training_data(features, split.train, split.valid, cfg, item_rows(split.meta.get("valid_candidate_items"), index))
    recipe = RecipeFit(cfg, show_progress=False)
    if hasattr(recipe, "shaped"):
        _, base = recipe.shaped(features, data)
    else:  # a code tree from before RecipeFit.shaped (before/after comparisons): the same rules
        from recsys.model.recipe import DataShape, shape_rules

        base = cfg
        for values, reason in shape_rules(DataShape.of(features, data), cfg):
            base = recipe.decide(base, values, reason)
    return base, features, data, split, catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="pipelines/configs/ml100k.yaml")
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--steps", type=int, default=None, help="time only this many steps, not the whole epoch")
    parser.add_argument("--no-profile", action="store_true", help="the timing only: no parts, no torch.profiler")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from recsys.model import train as training

    cfg, features, data, _, _ = recipe_base(args.config)
    run = EpochRun.build(cfg, features, data)
    for batch in list(run.batches())[:3]:  # warm-up
        run.step(batch)
    epoch_s, steps = run.epoch(max_steps=args.steps)
    print(f"code: {Path(training.__file__).parents[2]}; threads {torch.get_num_threads()}; config {args.config}")
    print(f"recipe base: pooling {cfg.model.user_pooling}, objective {cfg.train.objective}, teacher {cfg.train.teacher}")
    print(f"{'one epoch' if args.steps is None else 'timed'}: {steps} steps of {cfg.train.batch_size} windows in {epoch_s:.2f}s "
          f"({epoch_s / steps * 1000:.0f} ms/step)")
    if args.no_profile:
        return
    phases = Phases()
    with run.instrumented(phases):
        seconds, _ = run.epoch(phases, args.steps)
    for name, value in phases.split().items():
        print(f"  {name:>15}: {value:6.2f}s ({value / seconds:.0%})")
    table, _ = run.profile_steps(10, args.rows)
    print(table)


if __name__ == "__main__":
    sys.exit(main())
