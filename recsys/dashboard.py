"""The experiment dashboard: MLflow's UI over the project's store, opened on the training runs.

MLflow 3 opens an experiment in its GenAI view (traces, an assistant) and folds every step run under
its collapsed `pipeline` parent. So every experiment the `Tracker` creates carries:

- `mlflow.experimentKind = custom_model_development`: the kind MLflow reads to show the classic
  machine-learning pages (MLflow 3.17 decides the view from a global "GenAI / Model training" switch
  instead, which the `workflowType=machine_learning` URL parameter below sets);
- two saved views (experiment tags `mlflow.sharedViewState.<id>`, the format MLflow's own "Views >
  Save as new view" writes): **Training runs** (every `train` step run, flat, with its validation score
  beside the same-run baselines) and **Runs by step** (every step run grouped by step, the evaluation
  metrics as columns).

`python -m recsys.dashboard` (what `make dashboard` runs) adds them to a store made before this, prints
the address of the training-runs view, and starts `mlflow ui` on 127.0.0.1 with one worker and job
execution off.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow's "Machine learning" kind (not "genai_development")
SAVED_VIEW_PREFIX = "mlflow.sharedViewState."
TRAINING_VIEW = "recsys-training-runs"
STEPS_VIEW = "recsys-runs-by-step"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 5000


def _metric_columns(*names: str) -> list[str]:
    return [f"metrics.`{name}`" for name in names]


def _by_step() -> dict[str, Any]:
    """Group rows by the `step` tag: each step run is its own row instead of hiding in its parent."""
    return {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "step"}]}


def saved_views() -> dict[str, tuple[str, dict[str, Any]]]:
    """id -> (name, state) of the views every experiment gets; `state` is MLflow's runs-page state
    (search facets and table settings)."""
    facets = {"orderByKey": "attributes.start_time", "orderByAsc": False, "startTime": "ALL", "lifecycleFilter": "Active",
              "datasetsFilter": [], "modelVersionFilter": "All Runs"}
    return {
        TRAINING_VIEW: ("Training runs", {
            **facets, "searchFilter": "tags.step = 'train'", "groupBy": _by_step(),
            "selectedColumns": _metric_columns("best_valid", "baseline_valid.popularity", "baseline_valid.content_knn",
                                               "best_epoch", "train_seconds"),
        }),
        STEPS_VIEW: ("Runs by step", {
            **facets, "searchFilter": "", "groupBy": _by_step(),
            "selectedColumns": _metric_columns("best_valid", "recsys.ndcg_at_10", "popularity.ndcg_at_10",
                                               "content_knn.ndcg_at_10", "recsys.recall_at_20", "pipeline_seconds"),
        }),
    }


def _saved_view_value(name: str, state: Mapping[str, Any], now_ms: int) -> str:
    """The tag value MLflow's UI writes for a saved view: a JSON envelope whose `state` is the
    deflate-compressed, base64 JSON state."""
    packed = base64.b64encode(zlib.compress(json.dumps(state, separators=(",", ":")).encode())).decode("ascii")
    return json.dumps({"name": name, "createdAt": now_ms, "updatedAt": now_ms, "state": f"deflate;{packed}"},
                      separators=(",", ":"))


def experiment_tags(existing: Mapping[str, str] | None = None) -> dict[str, str]:
    """The dashboard tags an experiment lacks (all of them for a new one); a user's own edits of a
    view or of the kind are left alone."""
    existing = existing or {}
    now = int(time.time() * 1000)
    tags = {} if EXPERIMENT_KIND_TAG in existing else {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
    for view_id, (name, state) in saved_views().items():
        if SAVED_VIEW_PREFIX + view_id not in existing:
            tags[SAVED_VIEW_PREFIX + view_id] = _saved_view_value(name, state, now)
    return tags


def ensure_experiment_tags(client, experiment_id: str, existing: Mapping[str, str] | None = None) -> None:
    """Set the dashboard tags `experiment_id` lacks (one call per missing tag)."""
    for key, value in experiment_tags(existing).items():
        client.set_experiment_tag(experiment_id, key, value)


def runs_url(base: str, experiment_id: str, view: str | None = TRAINING_VIEW) -> str:
    """The address of an experiment's runs table in the machine-learning view, opened on a saved view
    (None: the plain table)."""
    query = (f"viewStateShareKey={view}&" if view else "") + "workflowType=machine_learning"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def server_command(store_uri: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> list[str]:
    """`mlflow ui` over `store_uri`: one worker (job execution is switched off in `server_env`)."""
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin) if mlflow_bin.exists() else (shutil.which("mlflow") or "mlflow"), "ui",
           "--backend-store-uri", store_uri, "--host", host, "--port", str(port), "--workers", "1"]
    return cmd


def server_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"})
    return env


def free_port(host: str = DEFAULT_HOST) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(store_uri: str, port: int | None = None, host: str = DEFAULT_HOST, log_path: Path | None = None,
                   timeout_s: float = 120.0) -> Iterator[str]:
    """`mlflow ui` over `store_uri` in a subprocess (its own process group) until the block ends; yields
    its base address once /health answers. Used by the browser test and the screenshot script."""
    import urllib.request

    port = port or free_port(host)
    base = f"http://{host}:{port}"
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(server_command(store_uri, host, port), env=server_env(), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow ui exited with {proc.returncode} before answering"
                                   + (f"; log: {log_path}" if log_path else ""))
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow ui did not answer on {base} within {timeout_s:.0f}s")
            time.sleep(0.5)
        yield base
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the group: mlflow ui and the uvicorn worker it started
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        if log_path:
            out.close()


def tidy_page(page) -> None:
    """Close what covers the runs table in a screenshot: the assistant panel MLflow opens on a local
    server's first visit, and the shared-view banner (a Playwright page)."""
    for component in ("mlflow.assistant.chat_panel.close", "mlflow.experiment_page.shared_view.dismiss"):
        button = page.locator(f'button[data-component-id="{component}"]')
        if button.count():
            button.first.click()
    page.wait_for_timeout(300)


def runs_frame(store_uri: str, experiment: str = "recsys", filter_string: str = "", max_results: int = 1000):
    """The experiment's runs as a polars frame: run_id, run_name, status, start_time, the `step` and
    `variant` tags, the parent run, then every param (`params.<key>`, text) and every metric's latest
    value (`metrics.<key>`); the newest run first. Empty when the experiment does not exist."""
    import datetime as dt

    import polars as pl
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return pl.DataFrame()
    rows = []
    for run in client.search_runs([found.experiment_id], filter_string, max_results=max_results, order_by=["attributes.start_time DESC"]):
        tags = run.data.tags
        rows.append({
            "run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
            "start_time": dt.datetime.fromtimestamp(run.info.start_time / 1000),
            "step": tags.get("step"), "variant": tags.get("variant"), "parent_run_id": tags.get("mlflow.parentRunId"),
            **{f"params.{k}": v for k, v in run.data.params.items()},
            **{f"metrics.{k}": float(v) for k, v in run.data.metrics.items()},
        })
    if not rows:
        return pl.DataFrame()
    keys = list(dict.fromkeys(k for row in rows for k in row))
    fixed = [k for k in keys if not k.startswith(("params.", "metrics."))]
    params = sorted(k for k in keys if k.startswith("params."))
    metrics = sorted(k for k in keys if k.startswith("metrics."))
    schema = {**{k: pl.String for k in params}, **{k: pl.Float64 for k in metrics}}
    return pl.DataFrame([{k: row.get(k) for k in fixed + params + metrics} for row in rows],
                        schema_overrides=schema, infer_schema_length=None)


def prepare(store_uri: str, experiment: str, base: str) -> list[str]:
    """Add the dashboard tags to `experiment` in the store (if it exists) and return the lines to print."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store_uri, registry_uri=store_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return [f"No experiment {experiment!r} in {store_uri} yet (run `make demo` or any recsys command first).",
                f"Experiments: {base}/#/experiments"]
    ensure_experiment_tags(client, found.experiment_id, found.tags)
    return [
        f"Training runs (each `train` step, validation vs baselines): {runs_url(base, found.experiment_id, TRAINING_VIEW)}",
        f"Runs by step (evaluation metrics per protocol):            {runs_url(base, found.experiment_id, STEPS_VIEW)}",
        f"All runs (pipeline runs, expand a row for its steps):      {runs_url(base, found.experiment_id, None)}",
        "Compare: tick two or more runs' boxes, then 'Compare'; a run's plots are under its Artifacts tab, in plots/.",
    ]


def main(argv: list[str] | None = None) -> int:
    from recsys.tracking import default_tracking_uri

    parser = argparse.ArgumentParser(prog="python -m recsys.dashboard", description=__doc__.split("\n")[0])
    parser.add_argument("--store", default=None, help="tracking URI (default: $MLFLOW_TRACKING_URI or $RECSYS_HOME/mlflow/mlflow.db)")
    parser.add_argument("--experiment", default="recsys")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--print-only", action="store_true", help="print the addresses, do not start the UI")
    args = parser.parse_args(argv)
    store = args.store or default_tracking_uri()
    base = f"http://{args.host}:{args.port}"
    for line in prepare(store, args.experiment, base):
        print(line, flush=True)
    if args.print_only:
        return 0
    print(f"Starting the MLflow UI on {base} over {store} (Ctrl-C stops it)", flush=True)
    try:
        return subprocess.call(server_command(store, args.host, args.port), env=server_env())
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
