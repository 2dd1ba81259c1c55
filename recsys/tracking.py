"""MLflow tracking: pipeline runs with nested step runs, artifacts, and a model registry with aliases.

Every pipeline step logs through one `Tracker`, so a run (or a step run alone, e.g. `recsys train`)
always records its params, metrics and artifacts. Bundles are registered as pyfunc models and the
`champion` alias moves only when a new version strictly beats the current champion's metric, so
`models:/<name>@champion` always points at the best bundle seen so far.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from recsys.config import PipelineConfig, TrackingConfig
from recsys.dashboard import ensure_experiment_tags, experiment_tags

if TYPE_CHECKING:
    from pytorch_lightning.loggers import MLFlowLogger

log = logging.getLogger(__name__)

try:  # MLflow's own limits, so we truncate exactly where the server would reject.
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH
except ImportError:  # pragma: no cover - older/newer MLflow layouts
    MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH = 6000, 100

CHAMPION_ALIAS = "champion"
DATA_TAG = "data_fingerprint"  # model-version tag: sha256 of the catalog + interactions it was trained on
METRIC_TAG_PREFIX = "metric:"
MODEL_NAME = "model"
BUNDLE_ARTIFACT = "bundle"
# Packages a served bundle needs; pinned to what is installed so MLflow does not infer them (slow).
_RUNTIME_PACKAGES = ("mlflow", "torch", "numpy", "pandas", "faiss-cpu", "pydantic", "pyyaml")


class TrackingError(RuntimeError):
    """The tracking store cannot be used (unreachable, refused, not writable): reported at start."""


# A tracking call that fails is retried this many times within about this many seconds, then tracking is
# off for the rest of the run (MLflow's own defaults retry for minutes per call). A user's setting wins.
HTTP_RETRIES, HTTP_TIMEOUT_S = "2", "20"
PREFLIGHT_TIMEOUT_S = 5.0


def bound_http_retries() -> None:
    """Set MLflow's HTTP retry/timeout environment to short defaults unless the user set them."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_RETRIES)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT_S)


_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. :/]")


def safe_key(name: str) -> str:
    """MLflow-valid metric/param/tag key: `ndcg@10` -> `ndcg_at_10` (MLflow rejects '@' and friends)."""
    return _UNSAFE_KEY_CHARS.sub("_", str(name).replace("@", "_at_"))


def metric_tag_key(metric_name: str) -> str:
    """Model-version tag holding a registration metric, e.g. `metric:ndcg_at_10`."""
    return f"{METRIC_TAG_PREFIX}{safe_key(metric_name)}"


# --------------------------------------------------------------------------- URIs


def default_tracking_uri(root: Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI if set, else a sqlite store in `<root or RECSYS_HOME>/mlflow/` (folder
    created): one store whatever the working directory, which the dashboard and `serve --model` read."""
    from recsys.paths import recsys_home

    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    folder = (Path(root) if root is not None else recsys_home()).resolve() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def _sqlite_db_path(uri: str) -> Path | None:
    """The database file of a local sqlite tracking URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    raw = uri[len("sqlite:///"):].split("?", 1)[0]
    if not raw or raw == ":memory:":
        return None
    return Path(unquote(raw))


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts next to a local sqlite store (`<db dir>/artifacts/<experiment>`), not in ./mlruns."""
    db = _sqlite_db_path(uri)
    if db is None:
        return None
    return (db.resolve().parent / "artifacts" / experiment).as_uri()


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class RegistrationResult:
    """Outcome of `Tracker.register_bundle`: which version was created and whether it is champion."""

    name: str
    version: str
    champion: bool
    previous_champion_value: float | None


# --------------------------------------------------------------------------- tracker


class Tracker:
    """Runs, params, metrics, artifacts and registration for one pipeline; no-ops when disabled."""

    def __init__(self, cfg: TrackingConfig, root: Path | None = None) -> None:
        self.cfg = cfg
        self.root = Path(root) if root is not None else None
        self.enabled = cfg.enabled
        self._runs: list[str] = []  # our open runs, outermost first
        self._uri: str | None = None
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self.failure: str | None = None  # why tracking stopped mid-run (the run's outputs are still written)

    def preflight(self) -> None:
        """Fail fast, before any long work, when the store cannot be used: an HTTP server that does not
        answer or refuses us, a local store whose folder is missing or not writable. TrackingError names
        tracking.tracking_uri and what to do."""
        if not self.enabled:
            return
        uri = self.tracking_uri
        hint = "; fix tracking.tracking_uri, start the server, or run with --set tracking.enabled=false"
        parsed = urlparse(uri)
        if parsed.scheme in ("http", "https"):
            import requests

            probe = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name"
            try:
                answer = requests.get(probe, params={"experiment_name": self.cfg.experiment}, timeout=PREFLIGHT_TIMEOUT_S)
            except requests.RequestException as err:
                raise TrackingError(f"tracking.tracking_uri {uri}: the MLflow server does not answer ({type(err).__name__}){hint}") from None
            if answer.status_code in (401, 403):
                raise TrackingError(f"tracking.tracking_uri {uri}: the server refused us (HTTP {answer.status_code}){hint}")
            mlflow_answer = answer.headers.get("content-type", "").startswith("application/json")
            if answer.status_code >= 500 or (answer.status_code != 200 and not mlflow_answer):
                raise TrackingError(f"tracking.tracking_uri {uri}: not an MLflow server that works (HTTP {answer.status_code} "
                                    f"from {probe}){hint}")
            return
        local = _sqlite_db_path(uri) if parsed.scheme == "sqlite" else (
            Path(unquote(parsed.path)) if parsed.scheme in ("", "file") else None)
        if local is None:
            return  # another scheme (databricks, ...): MLflow reports its own errors
        folder = local.parent if parsed.scheme == "sqlite" else local
        existing = next((f for f in [folder, *folder.parents] if f.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise TrackingError(f"tracking.tracking_uri {uri}: {existing or folder} is not a writable folder{hint}")
        if parsed.scheme == "sqlite" and local.exists() and not os.access(local, os.R_OK | os.W_OK):
            raise TrackingError(f"tracking.tracking_uri {uri}: {local} is not readable and writable{hint}")

    def _safely(self, what: str, call, *args, **kwargs):
        """Run one tracking call; when it fails, say so once, turn tracking off for the rest of the run
        and go on: a store that breaks mid-run costs the record, never the job's outputs."""
        if not self.enabled:
            return None
        try:
            return call(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any store failure (HTTP, sqlite, disk) degrades the same way
            self.tracking_failed(what, err)
            return None

    def tracking_failed(self, what: str, err: BaseException) -> None:
        if self.failure is None:
            self.failure = f"{what}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:500]
            log.error("MLflow tracking failed (%s); tracking is off for the rest of this run, its outputs are still "
                      "written", self.failure)
        self.enabled = False

    # -- lazy setup: a disabled tracker (or one never used) touches no files
    @property
    def tracking_uri(self) -> str:
        if self._uri is None:
            self._uri = self.cfg.tracking_uri or default_tracking_uri(self.root)
        return self._uri

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    @property
    def active_run_id(self) -> str | None:
        """The innermost run this tracker opened, or None."""
        return self._runs[-1] if self._runs else None

    @property
    def experiment_id(self) -> str | None:
        """The id of the experiment this tracker's runs went to (None before the first run)."""
        return self._experiment_id

    def _activate(self) -> None:
        """Point MLflow's fluent API (used by log_model and Lightning) at our store."""
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)

    def _experiment(self) -> str:
        if self._experiment_id is None:
            name = self.cfg.experiment
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                self._experiment_id = self.client.create_experiment(
                    name, artifact_location=_artifact_location(self.tracking_uri, name), tags=experiment_tags()
                )
                log.info("created MLflow experiment %r at %s", name, self.tracking_uri)
            else:
                if exp.lifecycle_stage == "deleted":
                    self.client.restore_experiment(exp.experiment_id)
                self._experiment_id = exp.experiment_id
                try:  # an experiment made before the dashboard views existed gets them now
                    ensure_experiment_tags(self.client, exp.experiment_id, exp.tags)
                except Exception as err:  # noqa: BLE001 - the views are a convenience; the run goes on
                    log.warning("MLflow: could not add the dashboard views to experiment %r: %s", name, err)
        return self._experiment_id

    @contextmanager
    def _run(self, name: str, tags: Mapping[str, Any] | None) -> Iterator[str]:
        """Open a (possibly nested) fluent run, end it FAILED/KILLED if an exception escapes."""
        self._activate()
        nested = mlflow.active_run() is not None
        try:
            run = mlflow.start_run(
                experiment_id=self._experiment(),
                run_name=name,
                nested=nested,
                tags={safe_key(k): str(v) for k, v in (tags or {}).items()},
            )
        except Exception as err:  # noqa: BLE001 - the store answered the preflight but cannot start a run
            if self._runs:  # a step inside a tracked pipeline: the job goes on untracked
                self.tracking_failed(f"starting run {name!r}", err)
                yield None
                return
            raise TrackingError(f"tracking.tracking_uri {self.tracking_uri}: cannot start an MLflow run: "
                                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        run_id = run.info.run_id
        self._runs.append(run_id)
        status = RunStatus.to_string(RunStatus.FINISHED)
        try:
            yield run_id
        except Exception:
            status = RunStatus.to_string(RunStatus.FAILED)
            log.error("run %s (%s) failed", name, run_id)
            raise
        except BaseException:
            status = RunStatus.to_string(RunStatus.KILLED)
            raise
        finally:
            self._runs.pop()
            active = mlflow.active_run()
            try:
                if active is not None and active.info.run_id == run_id:
                    mlflow.end_run(status)
                else:  # someone ended/replaced the fluent run; still record the outcome
                    self.client.set_terminated(run_id, status)
            except Exception as err:  # noqa: BLE001 - the store went away: the run stays open there
                self.tracking_failed(f"ending run {name!r}", err)  # (end_run pops the run before it calls the store)

    @contextmanager
    def pipeline_run(
        self, name: str, config: PipelineConfig | None = None, tags: dict | None = None
    ) -> Iterator[str | None]:
        """Parent run of a whole pipeline; logs the resolved config as params and `config.yaml`."""
        if not self.enabled:
            yield None
            return
        self.preflight()
        with self._run(name, tags) as run_id:
            log.info("MLflow pipeline run %s (%s) at %s", name, run_id, self.tracking_uri)
            if config is not None:
                self.log_params(config.flat())
                self._safely("logging config.yaml", self.client.log_text, run_id, config.to_yaml(), "config.yaml")
            yield run_id

    @contextmanager
    def step(self, name: str) -> Iterator[str | None]:
        """Child run for one step (tag `step=<name>`); standalone when no pipeline run is open."""
        if not self.enabled:
            yield None
            return
        if not self._runs:
            self.preflight()
        with self._run(name, {"step": name}) as run_id:
            yield run_id

    # -- logging on the innermost run
    def _current(self, what: str) -> str | None:
        run_id = self.active_run_id
        if run_id is None:
            log.warning("MLflow: no active run; %s not logged", what)
        return run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params, values stringified and truncated to MLflow's limit, in batches of <= 100."""
        if not self.enabled or not params or (run_id := self._current("params")) is None:
            return
        items = [Param(safe_key(k), str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self._safely("logging params", self.client.log_batch, run_id, params=items[start : start + MAX_PARAMS_TAGS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics (non-numeric values are skipped with a warning)."""
        if not self.enabled or not metrics or (run_id := self._current("metrics")) is None:
            return
        now = int(time.time() * 1000)
        items: list[Metric] = []
        for key, value in metrics.items():
            try:
                items.append(Metric(safe_key(key), float(value), now, step or 0))
            except (TypeError, ValueError):
                log.warning("MLflow: metric %r=%r is not numeric; skipped", key, value)
        for start in range(0, len(items), 1000):
            self._safely("logging metrics", self.client.log_batch, run_id, metrics=items[start : start + 1000])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled and (run_id := self._current("artifact")) is not None:
            self._safely(f"logging artifact {Path(path).name}", self.client.log_artifact, run_id, str(path), artifact_path)

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled and (run_id := self._current("artifacts")) is not None:
            self._safely(f"logging artifacts {Path(directory).name}", self.client.log_artifacts, run_id, str(directory), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled and tags and (run_id := self._current("tags")) is not None:
            for key, value in tags.items():
                self._safely("setting tags", self.client.set_tag, run_id, safe_key(key), str(value))

    # -- Lightning
    def lightning_logger(self, prefix: str = "") -> MLFlowLogger | None:
        """An MLFlowLogger writing to the innermost active run, so `self.log` lands on the step run;
        `prefix` keeps the curves of several fits in one run apart ("member1-valid/ndcg_at_10")."""
        if not self.enabled:
            return None
        run_id = self.active_run_id
        if run_id is None:
            log.warning("MLflow: lightning_logger() called outside a run; Lightning metrics not tracked")
            return None
        return _borrowed_run_logger(self.tracking_uri, self.cfg.experiment, run_id, prefix, self)

    # -- registry
    def register_bundle(
        self,
        bundle_dir: Path,
        metric_name: str,
        metric_value: float,
        higher_is_better: bool = True,
        *,
        name: str | None = None,
        data_fingerprint: str | None = None,
        baselines: Mapping[str, float] | None = None,
    ) -> RegistrationResult | None:
        """Log the bundle as a pyfunc model and register a version under `name` (default
        tracking.registered_model). `champion` moves to it only if it beats every baseline on its own
        validation split (`baselines`, e.g. popularity) and then the champion: by metric when the
        champion was trained on the same data (`data_fingerprint`), outright when the data are newer
        (validation scores on different data do not compare)."""
        if not self.enabled:
            return None
        bundle_dir = Path(bundle_dir)
        if not bundle_dir.is_dir():
            raise FileNotFoundError(f"bundle directory not found: {bundle_dir}")
        name = name or self.cfg.registered_model or "recsys"
        if self.active_run_id is None:
            with self.step("register"):
                return self.register_bundle(
                    bundle_dir, metric_name, metric_value, higher_is_better,
                    name=name, data_fingerprint=data_fingerprint, baselines=baselines,
                )
        return self._safely("registering the bundle", self._register, bundle_dir, metric_name, metric_value, higher_is_better,
                            name, data_fingerprint, baselines)

    def _register(self, bundle_dir: Path, metric_name: str, metric_value: float, higher_is_better: bool, name: str,
                  data_fingerprint: str | None, baselines: Mapping[str, float] | None) -> RegistrationResult:
        self._activate()
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=BundlePyfunc(),
            artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
            pip_requirements=_pip_requirements(),
            registered_model_name=name,
        )
        version = str(info.registered_model_version)
        value = float(metric_value)
        client = self.client
        client.set_model_version_tag(name, version, metric_tag_key(metric_name), repr(value))
        if data_fingerprint:
            client.set_model_version_tag(name, version, DATA_TAG, data_fingerprint)
        for baseline, score in (baselines or {}).items():
            client.set_model_version_tag(name, version, f"baseline:{safe_key(baseline)}", repr(float(score)))

        previous_version, previous, previous_data = _champion(client, name, metric_name)
        beaten_by = [b for b, score in (baselines or {}).items() if not (value > score if higher_is_better else value < score)]
        if math.isnan(value):
            wins, why = False, f"{metric_name} is NaN"
        elif beaten_by:
            wins, why = False, f"{metric_name}={value:.6g} does not beat the {', '.join(beaten_by)} baseline on validation"
        elif previous_version is None:
            wins, why = True, "no champion yet"
        elif data_fingerprint and previous_data != data_fingerprint:
            wins, why = True, f"trained on other data than champion v{previous_version} (data {data_fingerprint[:12]})"
        elif previous is None:
            wins, why = False, f"champion v{previous_version} has no {metric_name!r} tag to compare"
        else:
            wins = value > previous if higher_is_better else value < previous
            why = f"{metric_name}={value:.6g} vs champion v{previous_version} {previous:.6g} on the same data"
        if wins:
            client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
        log.info(
            "registered %s v%s: %s (%s)", name, version,
            "now @champion" if wins else "champion unchanged", why,
        )
        self.set_tags({"registered_model": name, "registered_version": version, "champion": wins})
        return RegistrationResult(name=name, version=version, champion=wins, previous_champion_value=previous)


def _champion(client: MlflowClient, name: str, metric_name: str) -> tuple[str | None, float | None, str | None]:
    """(version, stored metric value, data fingerprint) of the current champion; Nones when there is none."""
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        return None, None, None
    tags = mv.tags or {}
    raw = tags.get(metric_tag_key(metric_name))
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        value = None
    return str(mv.version), value, tags.get(DATA_TAG)


def _pip_requirements() -> list[str]:
    """Pinned installed versions of the serving runtime; absent packages are left out."""
    reqs = []
    for package in _RUNTIME_PACKAGES:
        try:
            reqs.append(f"{package}=={metadata.version(package).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


def _borrowed_run_logger(tracking_uri: str, experiment: str, run_id: str, prefix: str = "",
                         tracker: Tracker | None = None) -> MLFlowLogger:
    """MLFlowLogger on an existing run that does not terminate it: the Tracker owns the run's status. A
    failing store turns the tracker off instead of stopping the training."""
    from pytorch_lightning.loggers import MLFlowLogger

    class _BorrowedRunLogger(MLFlowLogger):
        def finalize(self, status: str = "success") -> None:
            if self._initialized and self._checkpoint_callback and (tracker is None or tracker.enabled):
                self._guarded("logging checkpoints", self._scan_and_log_checkpoints, self._checkpoint_callback)

        def log_metrics(self, metrics, step=None) -> None:
            self._guarded("logging training curves", super().log_metrics, metrics, step)

        def log_hyperparams(self, params) -> None:
            self._guarded("logging hyper-parameters", super().log_hyperparams, params)

        def _guarded(self, what, call, *args) -> None:
            if tracker is None:
                call(*args)
            elif tracker.enabled:
                try:
                    call(*args)
                except Exception as err:  # noqa: BLE001 - see Tracker._safely
                    tracker.tracking_failed(what, err)

    return _BorrowedRunLogger(experiment_name=experiment, tracking_uri=tracking_uri, run_id=run_id, prefix=prefix)


# --------------------------------------------------------------------------- resolving


def resolve_model_uri(uri: str, dst: Path | None = None, *, tracking_uri: str | None = None) -> Path:
    """Local bundle folder for `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/RUN/model` or a path.

    Downloads the model's artifacts (into `dst` or a temp folder) and returns the folder that was
    logged as `artifacts["bundle"]`. `tracking_uri` defaults to `default_tracking_uri()`.
    """
    if not uri.startswith(("models:/", "runs:/")):
        local = Path(urlparse(uri).path if uri.startswith("file:") else uri)
        if local.exists():
            return local
        raise FileNotFoundError(f"model uri {uri!r}: no such local path and not a models:/ or runs:/ uri")
    store = tracking_uri or default_tracking_uri()
    try:
        source = _concrete_artifact_uri(MlflowClient(tracking_uri=store, registry_uri=store), uri)
        if dst is not None:
            local_model = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(dst), tracking_uri=store, registry_uri=store
            ))
            return _bundle_dir(local_model, uri)
        return _cached_download(source, store, uri)
    except MlflowException as err:
        raise FileNotFoundError(f"model uri {uri!r} not found in {store}: {err.message}") from err


def _cached_download(source: str, store: str, uri: str) -> Path:
    """The bundle behind `source`, downloaded once into $RECSYS_HOME/artifacts/models/<hash of source>
    (a temporary sibling renamed into place, so a killed download leaves nothing half-written and
    nothing piles up in /tmp); later resolves of the same version reuse it."""
    import hashlib
    import shutil

    from recsys.paths import recsys_home

    cache = recsys_home() / "artifacts" / "models"
    final = cache / hashlib.sha256(f"{store}|{source}".encode()).hexdigest()[:16]
    if final.is_dir():  # downloaded before: the model folder is the one holding MLmodel
        model_dir = final if (final / "MLmodel").is_file() else next((p.parent for p in final.glob("*/MLmodel")), final)
        return _bundle_dir(model_dir, uri)
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache))
    try:
        local_model = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(staging), tracking_uri=store, registry_uri=store
        ))
        relative = local_model.relative_to(staging)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _bundle_dir(final / relative, uri)


def _concrete_artifact_uri(client: MlflowClient, uri: str) -> str:
    """Storage URI behind `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `models:/m-ID` or `runs:/RUN/NAME`.

    Resolved with our own client because MLflow's models:/ and runs:/ repositories fall back to the
    *global* tracking/registry URIs for logged models, which may point at another store.
    """
    scheme, _, body = uri.partition(":/")
    parts = [p for p in body.split("/") if p]
    if not parts:
        raise MlflowException(f"incomplete model uri {uri!r}")
    if scheme == "runs":
        run_id, rest = parts[0], parts[1:]
        run = client.get_run(run_id)
        if rest:
            for model in client.search_logged_models(
                experiment_ids=[run.info.experiment_id], filter_string=f"name = '{rest[0]}'"
            ):
                if model.source_run_id == run_id:
                    return "/".join([model.artifact_location.rstrip("/"), *rest[1:]])
        return "/".join([run.info.artifact_uri.rstrip("/"), *rest])
    head, rest = parts[0], parts[1:]
    if "@" in head:
        name, alias = head.split("@", 1)
        version = str(client.get_model_version_by_alias(name, alias).version)
    elif rest and rest[0].isdigit():
        name, version, rest = head, rest[0], rest[1:]
    elif head.startswith("m-"):
        return "/".join([client.get_logged_model(head).artifact_location.rstrip("/"), *rest])
    else:
        raise MlflowException(f"expected models:/NAME@ALIAS or models:/NAME/VERSION, got {uri!r}")
    location = client.get_model_version_download_uri(name, version)
    if location.startswith("models:/m-"):  # MLflow 3: a version points at a logged model
        location = client.get_logged_model(location[len("models:/"):].split("/")[0]).artifact_location
    return "/".join([location.rstrip("/"), *rest])


def _bundle_dir(model_dir: Path, uri: str) -> Path:
    """The `bundle` artifact folder inside a downloaded pyfunc model (path read from MLmodel)."""
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        raise FileNotFoundError(f"model uri {uri!r}: downloaded {model_dir} has no MLmodel file")
    from mlflow.models import Model

    flavor = Model.load(str(mlmodel)).flavors.get("python_function", {})
    entry = (flavor.get("artifacts") or {}).get(BUNDLE_ARTIFACT)
    if not entry:
        raise FileNotFoundError(f"model uri {uri!r}: model has no {BUNDLE_ARTIFACT!r} artifact")
    bundle = model_dir / entry["path"]
    if not bundle.exists():
        raise FileNotFoundError(f"model uri {uri!r}: bundle folder {bundle} missing after download")
    return bundle


# --------------------------------------------------------------------------- pyfunc


class BundlePyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper so `mlflow models serve` / `pyfunc.load_model` can recommend from a bundle."""

    def load_context(self, context: Any) -> None:
        from recsys.recommender import Recommender  # lazy: heavy, and only needed when serving

        self.recommender = Recommender.from_bundle(context.artifacts[BUNDLE_ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """One row per (user, recommended item); `params={"k": N}` sets the list length (default 10)."""
        k = int((params or {}).get("k", 10))
        rows: list[dict[str, Any]] = []
        for user_id in model_input["user_id"].tolist():
            rec = self.recommender.recommend_user(user_id, k)
            for rank, (item_id, score) in enumerate(zip(rec.item_ids, rec.scores), start=1):
                rows.append({"user_id": user_id, "item_id": item_id, "rank": rank, "score": float(score)})
        return pd.DataFrame(rows, columns=["user_id", "item_id", "rank", "score"])
