"""Profile: where one training epoch of the two-tower model spends its time.

Runs the training step of one model of a config (no ensemble, no item-item block: the towers only)
over one epoch of its training windows, timed as a plain loop (no Lightning, no validation), then
profiles 10 steps with torch.profiler and prints the operators by self CPU time. Run it under another
code tree to compare (`PYTHONPATH=OTHER_TREE python bench/profile_epoch.py`), and with
`RECSYS_THREADS=1` to see what the second core buys.
Run: `python bench/profile_epoch.py [--config pipelines/configs/ml100k.yaml] [--rows 15]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import recsys  # noqa: F401  (sizes the thread pools before torch loads)

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="pipelines/configs/ml100k.yaml")
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from pipelines.train import holdout_last
    from recsys.config import load_config
    from recsys.data.readers import load_dataset
    from recsys.encoders.features import build_item_features
    from recsys.encoders.store import FeatureStore
    from recsys.model import train as training
    from recsys.model.datamodule import SequenceDataModule
    from recsys.model.fitting import TowersFit

    cfg = load_config(args.config, {"tracking.enabled": False, "model.ensemble_size": 1, "model.item_item": "none"})
    catalog, interactions = load_dataset(cfg.data)
    features = build_item_features(catalog, cfg.encoders, store=FeatureStore(cfg.encoders.cache_dir), show_progress=False)
    train, valid = holdout_last(interactions, cfg.train.seed)
    prepared = training.prepare_training_data(features, train, valid, cfg)
    prepared.valid = None  # training steps only
    fit = TowersFit(cfg)
    model = fit.build(features, prepared)
    module = fit.module(model, features, prepared)
    module.log = lambda *a, **k: None  # outside a Trainer
    data = SequenceDataModule(prepared.sequences, cfg.model.max_history, cfg.train.batch_size, cfg.train.seed, False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    batches = list(data.train_dataloader())
    model.train()

    def step(batch) -> None:
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for batch in batches[:3]:
        step(batch)
    started = time.perf_counter()
    for batch in batches:
        step(batch)
    epoch_s = time.perf_counter() - started
    print(f"code: {Path(training.__file__).parents[2]}; threads {torch.get_num_threads()}; config {args.config}")
    print(f"one epoch: {len(batches)} steps of {cfg.train.batch_size} windows in {epoch_s:.2f}s ({epoch_s / len(batches) * 1000:.0f} ms/step)")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches[:10]:
            step(batch)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    sys.exit(main())
