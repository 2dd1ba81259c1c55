"""Job `run`: embed -> train (bundle + index + registry) -> recommend -> evaluate, one MLflow parent
run with a nested run per step. Each step writes its file under `output_dir`, so a killed job can be
re-run: embeddings come back from the cache and finished files are simply rewritten atomically."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from recsys.config import PipelineConfig
from recsys.data.readers import load_dataset
from recsys.tracking import RegistrationResult, Tracker

from pipelines.embed import run_embed
from pipelines.evaluate import run_evaluate
from pipelines.recommend import run_recommend, summarise
from pipelines.train import run_train

logger = logging.getLogger(__name__)


@dataclass
class RunOutputs:
    bundle: Path
    recommendations: Path
    report_md: Path | None
    report_json: Path | None
    registration: RegistrationResult | None
    tracking_uri: str
    parent_run_id: str | None
    seconds: float
    tracking_failure: str | None = None  # the store failed mid-run: these outputs are complete, its record is not
    experiment_id: str | None = None  # the MLflow experiment the runs are in (the dashboard's address names it)


def run_pipeline(cfg: PipelineConfig, *, evaluate: bool = True, show_progress: bool = True) -> RunOutputs:
    started = time.perf_counter()
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(cfg.to_yaml())
    tracker = Tracker(cfg.tracking)
    tracker.preflight()  # an unusable store is reported now, not after the training
    catalog, interactions = load_dataset(cfg.data)
    with tracker.pipeline_run("pipeline", cfg, tags={"job": "run"}) as parent_id:
        features = run_embed(cfg, catalog, tracker, show_progress=show_progress)
        bundle, _, registration = run_train(
            cfg, catalog, interactions, features, tracker, out / "bundle", show_progress=show_progress
        )
        with tracker.step("recommend"):
            recs = run_recommend(
                bundle,
                out / "recommendations.parquet",
                k=cfg.recommend.k,
                exclude_seen=cfg.recommend.exclude_seen,
                chunk_size=cfg.recommend.chunk_size,
                show_progress=show_progress,
            )
            tracker.log_metrics(summarise(recs))
        report_md = report_json = None
        if evaluate and cfg.eval.protocols:
            report_md, report_json, _ = run_evaluate(
                cfg, interactions, features, tracker, out / "report", show_progress=show_progress
            )
        seconds = time.perf_counter() - started
        tracker.log_metrics({"pipeline_seconds": seconds})
    outputs = RunOutputs(bundle, recs, report_md, report_json, registration, tracker.tracking_uri, parent_id, seconds,
                         tracker.failure, tracker.experiment_id)
    (out / "run.json").write_text(json.dumps({k: str(v) for k, v in outputs.__dict__.items()}, indent=2))
    return outputs
