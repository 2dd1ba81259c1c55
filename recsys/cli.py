"""`recsys` command line: embed, train, index, recommend, evaluate, run, demo, serve.

Every command takes `--config FILE.yaml` (see pipelines/configs/) and `--set section.field=value`
overrides. The flags of `train` and `recommend` are a fixed contract other tools call.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
logger = logging.getLogger("recsys")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (pipelines/configs/*.yaml).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override: section.field=value (repeatable).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
ThreadsOpt = Annotated[
    Optional[int],
    typer.Option("--threads", min=1, help="Threads for torch, faiss and BLAS (default: $RECSYS_THREADS, else the CPUs this process may use)."),
]


def _setup_logging(quiet: bool = False) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Lightning sets its rank_zero loggers to INFO itself, so the parents' level alone does not hold them.
    noisy = ("pytorch_lightning", "lightning", "lightning_fabric", "alembic", "mlflow", "httpx", "sentence_transformers",
             "pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
             "lightning_fabric.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
    for name in noisy:
        logging.getLogger(name).setLevel(logging.ERROR if quiet else logging.WARNING)
    if quiet:  # -q: our warnings and errors only, not libraries' deprecation notes or progress bars
        import warnings

        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read by transformers' weight-loading bar
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", module="pytorch_lightning")
        warnings.filterwarnings("ignore", module="lightning")


def _start(quiet: bool = False, threads: int | None = None, *, role_default: int | None = None) -> None:
    """Logging, then the thread pools (recsys.runtime), whose plan is logged once at start."""
    from recsys.runtime import configure_threads

    _setup_logging(quiet)
    try:
        plan = configure_threads(threads, role_default=role_default)
    except ValueError as err:  # a bad RECSYS_THREADS / OMP_NUM_THREADS
        _fail(str(err))
    logger.info(plan.describe())
    from recsys.tracking import bound_http_retries

    bound_http_retries()
    _load_plugins()


def _load_plugins() -> None:
    """Import the modules named in $RECSYS_PLUGINS (comma-separated): where a project registers its own
    modalities and encoders (docs/architecture.md), before any config or bundle names them."""
    import importlib

    for name in filter(None, (part.strip() for part in os.environ.get("RECSYS_PLUGINS", "").split(","))):
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - any failure to import names the plugin
            _fail(f"RECSYS_PLUGINS: cannot import {name!r}: {err}")
        logger.info("plugin %s loaded", name)


def _config(path: Path | None, overrides: list[str] | None, extra: dict | None = None):
    from recsys.config import load_config, parse_override

    pairs = dict(parse_override(o) for o in overrides or [])
    pairs.update({k: v for k, v in (extra or {}).items() if v is not None})
    cfg = load_config(path, pairs)
    if cfg.tracking.enabled:
        from recsys.tracking import default_tracking_uri

        store = cfg.tracking.tracking_uri or default_tracking_uri()
    else:
        store = "off"
    logger.info("outputs: %s; embedding cache: %s; MLflow store: %s (relative paths live under RECSYS_HOME)",
                cfg.output_dir, cfg.encoders.cache_dir, store)
    return cfg


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _os_error(err: OSError) -> str:
    """An OSError as `path: reason` (the file system's words), on one line."""
    if err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _guard(fn):
    """Turn expected user errors (bad data, config, bundle, a file that cannot be read or written) into
    one clear line and exit code 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from recsys.config import ConfigError
        from recsys.data.schemas import DataValidationError

        try:
            return fn(*args, **kwargs)
        except Exception as err:
            # recsys.bundle imports torch: a BundleError can only come from it once it is loaded, and a
            # bad input file then fails in a second instead of after torch's import (the same for
            # recsys.tracking and mlflow, and for the batch job's lock).
            loaded = [getattr(sys.modules.get(module), name, ()) for module, name in
                      (("recsys.bundle", "BundleError"), ("recsys.tracking", "TrackingError"),
                       ("recsys.resume", "ConcurrentJobError"))]
            if isinstance(err, (DataValidationError, ConfigError, FileNotFoundError, *loaded)):
                _fail(str(err))
            if isinstance(err, OSError):  # permission denied, read-only file system, disk full, ...
                _fail(_os_error(err))
            raise

    return wrapper


def _check_output(path: Path, what: str, *, is_file: bool = True) -> None:
    """Stop before any work when `path` cannot be written: the nearest existing folder above it (the
    missing ones are made later) must be a folder this process can create a file in."""
    import tempfile

    if is_file and path.is_dir():
        _fail(f"{path}: is a folder; the {what} is a file, give a file name (e.g. {path / 'out.parquet'})")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        _fail(f"{path}: cannot write the {what} there: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        _fail(f"{path}: cannot write the {what} there: {folder}: {err.strerror or err}")


def _data_overrides(catalog: Path | None, interactions: Path | None, movielens: Path | None) -> dict:
    extra: dict = {}
    if catalog is not None or interactions is not None:
        if catalog is None or interactions is None:
            _fail("--catalog and --interactions go together")
        extra.update({"data.catalog": str(catalog), "data.interactions": str(interactions), "data.movielens": None})
    if movielens is not None:
        extra["data.movielens"] = str(movielens)
    return extra


CatalogOpt = Annotated[Optional[Path], typer.Option("--catalog", help="Catalog parquet/CSV (item_id, title, ...).")]
InteractionsOpt = Annotated[Optional[Path], typer.Option("--interactions", help="Interactions parquet/CSV.")]
MovieLensOpt = Annotated[Optional[Path], typer.Option("--movielens", help="A MovieLens folder (ml-100k / ml-1m).")]


@app.command()
@_guard
def embed(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    catalog: CatalogOpt = None,
    interactions: InteractionsOpt = None,
    movielens: MovieLensOpt = None,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Embed the catalog with the frozen encoders (cached by content hash)."""
    _start(quiet, threads)
    from recsys.data.readers import load_dataset

    cfg = _config(config, set_, _data_overrides(catalog, interactions, movielens))
    _check_output(cfg.output_dir / "item_features.npz", "features file")  # pipelines.embed.features_path, torch-free
    catalog_df, _ = load_dataset(cfg.data)  # bad input stops here, before torch and the encoders load
    from recsys.tracking import Tracker

    from pipelines.embed import features_path, run_embed

    run_embed(cfg, catalog_df, Tracker(cfg.tracking), show_progress=not quiet)
    typer.echo(f"features: {features_path(cfg)}")


@app.command()
@_guard
def train(
    catalog: CatalogOpt = None,
    interactions: InteractionsOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Bundle directory to write.")] = None,
    movielens: MovieLensOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    register: Annotated[bool, typer.Option(help="Register the model in MLflow (champion if better).")] = True,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Train on all given interactions (validation = each user's last one) and write a bundle."""
    _start(quiet, threads)
    from recsys.data.readers import load_dataset

    cfg = _config(config, set_, _data_overrides(catalog, interactions, movielens))
    out = out or cfg.output_dir / "bundle"
    _check_output(out, "bundle", is_file=False)
    catalog_df, interactions_df = load_dataset(cfg.data)  # bad input stops here, before torch loads
    from recsys.tracking import Tracker

    from pipelines.embed import run_embed
    from pipelines.train import run_train

    tracker = Tracker(cfg.tracking)
    tracker.preflight()  # an unusable store is reported now, not after the training
    features = run_embed(cfg, catalog_df, tracker, show_progress=not quiet)
    started = time.perf_counter()
    bundle, result, registration = run_train(
        cfg, catalog_df, interactions_df, features, tracker, out, register=register, show_progress=not quiet
    )
    minutes = (time.perf_counter() - started) / 60
    budget = f" of the {cfg.train.budget_minutes:g}-minute budget (train.budget_minutes)" if cfg.train.tune else ""
    baselines = "".join(f", {name} {value:.4f}" for name, value in result.baselines.items())
    typer.echo(f"bundle: {bundle}  ({result.valid_metric_name}={result.best_metric:.4f}{baselines}; "
               f"trained in {minutes:.1f} min{budget})")
    if result.losing_to():
        typer.secho(
            f"warning: the model does not beat {', '.join(result.losing_to())} on validation; it will not become champion",
            fg=typer.colors.RED, err=True,
        )
    if registration is not None:
        typer.echo(f"registered: {registration.name} v{registration.version}{' (champion)' if registration.champion else ' (champion unchanged)'}")
    _tracking_outcome(tracker.failure)


@app.command()
@_guard
def index(
    bundle: Annotated[Path, typer.Option("--bundle", help="Bundle directory.")],
    kind: Annotated[Optional[str], typer.Option(help="auto | flat | hnsw | ivf")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Rebuild a bundle's faiss index (e.g. --kind hnsw)."""
    _start(threads=threads)
    from pipelines.index import run_index

    cfg = _config(config, set_, {"index.kind": kind})
    built = run_index(bundle, cfg.index)
    typer.echo(f"index: {built.kind}, {len(built)} items, dim {built.dim}")


@app.command()
@_guard
def recommend(
    bundle: Annotated[Path, typer.Option("--bundle", help="Bundle directory.")],
    out: Annotated[Path, typer.Option("--out", help="Output parquet: user_id, item_id, rank, score.")],
    users: Annotated[Optional[Path], typer.Option("--users", help="Parquet/CSV with a user_id column (default: all known users).")] = None,
    k: Annotated[int, typer.Option("--k", min=1, max=10_000)] = 10,
    exclude_seen: Annotated[bool, typer.Option("--exclude-seen", help="Never recommend a user's seen items.")] = False,
    candidates: Annotated[Optional[Path], typer.Option("--candidates", help="Parquet/CSV with an item_id column.")] = None,
    chunk_size: Annotated[int, typer.Option("--chunk-size", min=1, help="Users per chunk; each finished chunk is kept, so a killed run resumes (same job) where it stopped.")] = 1024,
    live_log: Annotated[Optional[Path], typer.Option("--live-log", help="Live catalog log to replay (default: the bundle's live_catalog.jsonl, if any).")] = None,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Batch top-K recommendations to parquet, in chunks, written atomically; a re-run of a killed job resumes it."""
    _start(quiet, threads)
    from pipelines.recommend import run_recommend, summarise

    _check_output(out, "recommendations file")
    path = run_recommend(
        bundle, out, k=k, users_path=users, candidates_path=candidates, exclude_seen=exclude_seen,
        chunk_size=chunk_size, show_progress=not quiet, live_log=live_log,
    )
    typer.echo(f"recommendations: {path} {summarise(path)}")


@app.command()
@_guard
def evaluate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    catalog: CatalogOpt = None,
    interactions: InteractionsOpt = None,
    movielens: MovieLensOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Report directory.")] = None,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Protocols (loo, cold, temporal): recsys vs same-run baselines; report.md + report.json."""
    _start(quiet, threads)
    from recsys.data.readers import load_dataset
    from recsys.tracking import Tracker

    from pipelines.embed import run_embed
    from pipelines.evaluate import run_evaluate

    cfg = _config(config, set_, _data_overrides(catalog, interactions, movielens))
    tracker = Tracker(cfg.tracking)
    tracker.preflight()
    catalog_df, interactions_df = load_dataset(cfg.data)
    with tracker.pipeline_run("evaluate", cfg, tags={"job": "evaluate"}):
        features = run_embed(cfg, catalog_df, tracker, show_progress=not quiet)
        md, js, _ = run_evaluate(cfg, interactions_df, features, tracker, out or cfg.output_dir / "report", show_progress=not quiet)
    typer.echo(md.read_text())
    typer.echo(f"report: {md}  {js}")
    _tracking_outcome(tracker.failure)


def _run_and_report(cfg, *, evaluate: bool = True, quiet: bool = False) -> None:
    from pipelines.run import run_pipeline

    outputs = run_pipeline(cfg, evaluate=evaluate, show_progress=not quiet)
    if outputs.report_md:
        typer.echo(Path(outputs.report_md).read_text())
    _print_outputs(outputs)
    _tracking_outcome(outputs.tracking_failure)


TRACKING_FAILED_EXIT = 3


def _tracking_outcome(failure: str | None) -> None:
    """Exit 3 after a job whose outputs are all written but whose MLflow record broke off mid-run, so a
    scheduler notices that the run was not (fully) recorded or registered."""
    if failure:
        typer.secho(f"error: MLflow tracking failed mid-run ({failure}); every output above was written, "
                    "but the run's record is incomplete and the model was not registered after that point",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(code=TRACKING_FAILED_EXIT)


def _print_outputs(outputs) -> None:
    typer.secho("\nDone in {:.0f}s".format(outputs.seconds), fg=typer.colors.GREEN, bold=True)
    typer.echo(f"  bundle:           {outputs.bundle}")
    typer.echo(f"  recommendations:  {outputs.recommendations}")
    if outputs.report_md:
        typer.echo(f"  report:           {outputs.report_md}")
    typer.echo(f"  MLflow store:     {outputs.tracking_uri}  (parent run {outputs.parent_run_id})")
    if outputs.registration:
        r = outputs.registration
        typer.echo(f"  registry:         models:/{r.name}/{r.version}{'  -> alias champion' if r.champion else ''}")
    from recsys.dashboard import DEFAULT_HOST, DEFAULT_PORT, runs_url

    address = (runs_url(f"http://{DEFAULT_HOST}:{DEFAULT_PORT}", outputs.experiment_id) if outputs.experiment_id
               else f"http://{DEFAULT_HOST}:{DEFAULT_PORT}")
    typer.echo(f"  dashboard:        make dashboard, then open {address}")


@app.command()
@_guard
def run(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    catalog: CatalogOpt = None,
    interactions: InteractionsOpt = None,
    movielens: MovieLensOpt = None,
    evaluate: Annotated[bool, typer.Option(help="Also run the evaluation protocols.")] = True,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """The whole job: embed -> train -> index -> recommend -> evaluate, tracked in MLflow."""
    _start(quiet, threads)
    cfg = _config(config, set_, _data_overrides(catalog, interactions, movielens))
    _run_and_report(cfg, evaluate=evaluate, quiet=quiet)


@app.command()
@_guard
def demo(set_: SetOpt = None, quiet: QuietOpt = False, threads: ThreadsOpt = None) -> None:
    """The whole job on the bundled demo sample (data/sample), from the repository root."""
    _start(quiet, threads)
    root = Path(__file__).resolve().parent.parent
    config_path = root / "pipelines" / "configs" / "demo.yaml"
    if not config_path.exists():
        _fail(f"demo config not found at {config_path}; run `recsys demo` from a clone of the repository")
    os.chdir(root)
    _run_and_report(_config(config_path, set_), quiet=quiet)


@app.command()
def serve(
    bundle: Annotated[Optional[Path], typer.Option("--bundle", help="Bundle directory.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Registry URI, e.g. models:/recsys-two-tower@champion.")] = None,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    poll_seconds: Annotated[float, typer.Option(help="With --model: re-resolve the alias this often and hot-reload when it moves (0 = off).")] = 0.0,
    max_body_bytes: Annotated[int, typer.Option(help="Larger request bodies get 413.")] = 1 << 20,
    max_image_bytes: Annotated[
        int, typer.Option(min=0, help="Largest image a new item may carry as bytes (image_base64; larger: 413; 0: refused).")
    ] = 4 << 20,
    graceful_timeout: Annotated[
        float, typer.Option(min=0, help="On SIGTERM: seconds in-flight requests get to finish before the server exits (0: no limit).")
    ] = 30.0,
    live_log: Annotated[
        Optional[Path],
        typer.Option("--live-log", help="Where items added/removed through the API are kept and replayed from (default: BUNDLE/live_catalog.jsonl, or $RECSYS_HOME/live/ for --model)."),
    ] = None,
    threads: Annotated[
        Optional[int],
        typer.Option("--threads", min=1, help="Threads for torch and faiss (default: $RECSYS_THREADS, else 1: per-request work is tiny)."),
    ] = None,
    admin_token_file: Annotated[
        Optional[Path],
        typer.Option("--admin-token-file", help="File whose first line is the admin endpoints' bearer token (default: $RECSYS_ADMIN_TOKEN; neither: admin endpoints disabled)."),
    ] = None,
    bundle_root: Annotated[
        Optional[Path], typer.Option("--bundle-root", help="Reloads may name bundles under this folder only (default: the served bundle's folder).")
    ] = None,
    image_root: Annotated[
        Optional[Path], typer.Option("--image-root", help="A new item's image_path must lie under this folder (default: image paths refused).")
    ] = None,
) -> None:
    """Serve the retrieval API (FastAPI + uvicorn) over a bundle or a registered model."""
    _start(threads=threads, role_default=1)
    if (bundle is None) == (model is None):
        _fail("give exactly one of --bundle DIR or --model models:/NAME@ALIAS")
    from recsys.serving.app import serve as serve_app
    from recsys.serving.auth import read_admin_token

    try:
        token = read_admin_token(admin_token_file)
    except ValueError as err:
        _fail(str(err))
    serve_app(
        bundle=bundle, model_uri=model, host=host, port=port, poll_seconds=poll_seconds, max_body_bytes=max_body_bytes,
        threads=threads, live_log=live_log, admin_token=token, bundle_root=bundle_root, image_root=image_root,
        max_image_bytes=max_image_bytes, graceful_timeout_s=graceful_timeout or None,
    )


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
