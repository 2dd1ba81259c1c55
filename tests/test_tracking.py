"""Tracker behaviour against a throwaway sqlite store: runs, nesting, failures, registry aliases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from recsys.config import PipelineConfig, TrackingConfig  # noqa: E402
from recsys.tracking import (  # noqa: E402
    RegistrationResult,
    Tracker,
    default_tracking_uri,
    resolve_model_uri,
)


@pytest.fixture(autouse=True)
def _isolated_mlflow_globals(monkeypatch: pytest.MonkeyPatch):
    """Tracker points MLflow's fluent API (module globals + env vars) at its store; undo that after."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Nothing may land in the working directory (no ./mlflow.db, no ./mlruns)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield
    assert list(cwd.iterdir()) == []


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return default_tracking_uri(tmp_path)


@pytest.fixture
def tracker(tmp_path: Path) -> Tracker:
    return Tracker(TrackingConfig(experiment="test-exp", registered_model="test-model"), root=tmp_path)


def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_default_uri_is_sqlite_under_root_and_env_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    assert (tmp_path / "mlflow").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert default_tracking_uri(tmp_path) == "http://tracking.example:5000"


def test_parent_and_nested_runs(tracker: Tracker, uri: str, tmp_path: Path) -> None:
    cfg = PipelineConfig()
    with tracker.pipeline_run("pipe", config=cfg, tags={"kind": "test"}) as parent:
        with tracker.step("train") as child:
            tracker.log_params({"lr": 0.1, "long": "x" * 10_000})
            tracker.log_params({f"p{i}": i for i in range(250)})  # > 100 per MLflow batch
            tracker.log_metrics({"loss": 1.5}, step=0)
            tracker.log_metrics({"loss": 0.5}, step=1)
            note = tmp_path / "note.txt"
            note.write_text("hi")
            tracker.log_artifact(note, "notes")
        tracker.set_tags({"done": "yes"})
    client = _client(uri)
    p, c = client.get_run(parent), client.get_run(child)
    assert p.info.status == c.info.status == "FINISHED"
    assert c.data.tags["mlflow.parentRunId"] == parent
    assert c.data.tags["step"] == "train"
    assert "mlflow.parentRunId" not in p.data.tags
    assert p.data.tags["kind"] == "test" and p.data.tags["done"] == "yes"
    assert len(p.data.params) == len(cfg.flat())
    assert p.data.params["train.epochs"] == str(cfg.train.epochs)
    assert c.data.params["lr"] == "0.1" and c.data.params["p249"] == "249"
    assert len(c.data.params) == 252
    assert 0 < len(c.data.params["long"]) < 10_000  # truncated, not rejected
    assert [m.value for m in client.get_metric_history(child, "loss")] == [1.5, 0.5]
    assert "config.yaml" in {a.path for a in client.list_artifacts(parent)}
    assert [a.path for a in client.list_artifacts(child, "notes")] == ["notes/note.txt"]
    # artifacts live under <root>/mlflow/artifacts/<experiment>, not ./mlruns
    exp = client.get_experiment(p.info.experiment_id)
    assert exp.artifact_location == (tmp_path.resolve() / "mlflow" / "artifacts" / "test-exp").as_uri()
    assert (tmp_path / "mlflow" / "artifacts" / "test-exp").is_dir()


def test_standalone_step_and_failure_marks_failed(tracker: Tracker, uri: str) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with tracker.pipeline_run("pipe") as parent:
            with tracker.step("train") as child:
                raise RuntimeError("boom")
    client = _client(uri)
    assert client.get_run(parent).info.status == "FAILED"
    assert client.get_run(child).info.status == "FAILED"
    assert mlflow.active_run() is None

    with tracker.step("index") as alone:
        tracker.log_metrics({"n": 3, "ndcg@10": 0.5, "bad": "text"})
    run = client.get_run(alone)
    assert run.info.status == "FINISHED" and "mlflow.parentRunId" not in run.data.tags
    assert run.data.metrics == {"n": 3.0, "ndcg_at_10": 0.5}


def test_disabled_tracker_is_noop(tmp_path: Path) -> None:
    t = Tracker(TrackingConfig(enabled=False), root=tmp_path)
    with t.pipeline_run("pipe", config=PipelineConfig()) as parent, t.step("train") as child:
        t.log_params({"a": 1})
        t.log_metrics({"m": 1.0})
        t.set_tags({"x": "y"})
        t.log_artifacts(tmp_path)
        assert t.lightning_logger() is None
        assert t.register_bundle(tmp_path, "ndcg", 1.0) is None
    assert parent is None and child is None
    assert [p.name for p in tmp_path.iterdir()] == ["cwd"]
    assert mlflow.active_run() is None


def test_lightning_logger_logs_epochs_on_step_run(tracker: Tracker, uri: str, tmp_path: Path) -> None:
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Toy(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.lin(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(8, 2), torch.randn(8, 1)), batch_size=4)
    with tracker.pipeline_run("pipe"), tracker.step("train") as child:
        logger = tracker.lightning_logger()
        assert logger is not None and logger.run_id == child
        trainer = pl.Trainer(
            max_epochs=2, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu",
        )
        trainer.fit(Toy(), data)
        # A second fit in the same run (an ensemble member) keeps its curves apart by a prefix.
        member = tracker.lightning_logger(prefix="member1")
        assert member is not None and member.run_id == child
        pl.Trainer(
            max_epochs=1, logger=member, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu",
        ).fit(Toy(), data)
        tracker.log_metrics({"after_fit": 1.0})
    client = _client(uri)
    assert len(client.get_metric_history(child, "train_loss")) == 2
    assert len(client.get_metric_history(child, "member1-train_loss")) == 1
    assert client.get_run(child).data.metrics["after_fit"] == 1.0
    assert client.get_run(child).info.status == "FINISHED"


def _bundle(tmp_path: Path, tag: str) -> Path:
    d = tmp_path / f"bundle-{tag}"
    d.mkdir()
    (d / "manifest.json").write_text(f'{{"tag": "{tag}"}}')
    (d / "items.txt").write_text("a\nb\n")
    return d


def test_registry_champion_alias_and_resolve(tracker: Tracker, uri: str, tmp_path: Path) -> None:
    results: list[RegistrationResult] = []
    for tag, value in [("v1", 0.10), ("v2", 0.30), ("v3", 0.20)]:
        with tracker.pipeline_run(f"pipe-{tag}"), tracker.step("register"):
            results.append(tracker.register_bundle(_bundle(tmp_path, tag), "ndcg@10", value))
    assert [(r.version, r.champion) for r in results] == [("1", True), ("2", True), ("3", False)]
    assert [r.previous_champion_value for r in results] == [None, 0.10, 0.30]
    assert {r.name for r in results} == {"test-model"}

    # resolving must use the given store, not MLflow's global URIs
    other = f"sqlite:///{tmp_path / 'other.db'}"
    mlflow.set_tracking_uri(other)
    mlflow.set_registry_uri(other)

    client = _client(uri)
    champ = client.get_model_version_by_alias("test-model", "champion")
    assert str(champ.version) == "2"
    assert float(champ.tags["metric:ndcg_at_10"]) == 0.30
    assert float(client.get_model_version("test-model", "3").tags["metric:ndcg_at_10"]) == 0.20

    got = resolve_model_uri("models:/test-model@champion", tmp_path / "dl-champ", tracking_uri=uri)
    assert got.is_dir() and sorted(p.name for p in got.iterdir()) == ["items.txt", "manifest.json"]
    assert '"v2"' in (got / "manifest.json").read_text()

    got3 = resolve_model_uri("models:/test-model/3", tmp_path / "dl-3", tracking_uri=uri)
    assert '"v3"' in (got3 / "manifest.json").read_text()

    run_id = client.get_model_version("test-model", "1").run_id
    got1 = resolve_model_uri(f"runs:/{run_id}/model", tmp_path / "dl-1", tracking_uri=uri)
    assert '"v1"' in (got1 / "manifest.json").read_text()

    # lower-is-better flips the comparison: 0.05 beats the champion's 0.30
    with tracker.step("register"):
        low = tracker.register_bundle(_bundle(tmp_path, "v4"), "ndcg@10", 0.05, higher_is_better=False)
    assert low.champion and low.version == "4"


def test_resolve_errors_and_local_paths(tmp_path: Path, uri: str) -> None:
    assert resolve_model_uri(str(tmp_path)) == tmp_path
    with pytest.raises(FileNotFoundError, match="nope"):
        resolve_model_uri(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="models:/missing@champion"):
        resolve_model_uri("models:/missing@champion", tmp_path / "dl", tracking_uri=uri)


def test_a_model_below_popularity_never_becomes_champion(tracker: Tracker, tmp_path: Path) -> None:
    with tracker.step("register"):
        first = tracker.register_bundle(
            _bundle(tmp_path, "weak"), "ndcg@10", 0.04, data_fingerprint="d1", baselines={"popularity": 0.05, "content_knn": 0.01}
        )
    assert not first.champion  # not even as the first model: the registry stays without a champion
    with tracker.step("register"):
        good = tracker.register_bundle(_bundle(tmp_path, "good"), "ndcg@10", 0.08, data_fingerprint="d1", baselines={"popularity": 0.05})
    assert good.champion
    with tracker.step("register"):  # beats the champion's metric, loses to content-kNN: refused
        tricky = tracker.register_bundle(
            _bundle(tmp_path, "tricky"), "ndcg@10", 0.09, data_fingerprint="d1", baselines={"popularity": 0.05, "content_knn": 0.10}
        )
    assert not tricky.champion
    champ = _client(tracker.tracking_uri).get_model_version_by_alias("test-model", "champion")
    assert str(champ.version) == good.version
    assert float(champ.tags["baseline:popularity"]) == 0.05 and champ.tags["data_fingerprint"] == "d1"


def test_champion_gates_compare_only_models_of_the_same_data(tracker: Tracker, tmp_path: Path) -> None:
    with tracker.step("register"):
        old = tracker.register_bundle(_bundle(tmp_path, "a"), "ndcg@10", 0.30, data_fingerprint="monday", baselines={"popularity": 0.1})
    with tracker.step("register"):  # same data, lower validation: the champion stays
        same = tracker.register_bundle(_bundle(tmp_path, "b"), "ndcg@10", 0.20, data_fingerprint="monday", baselines={"popularity": 0.1})
    with tracker.step("register"):  # newer data: its validation does not compare with Monday's, and it beats popularity
        newer = tracker.register_bundle(_bundle(tmp_path, "c"), "ndcg@10", 0.20, data_fingerprint="tuesday", baselines={"popularity": 0.1})
    assert (old.champion, same.champion, newer.champion) == (True, False, True)


def test_two_data_sets_never_share_a_registered_model_or_champion(tmp_path: Path) -> None:
    from recsys.config import DataConfig

    shop = TrackingConfig(experiment="e").model_name(DataConfig(catalog=Path("/data/shop/catalog.csv"), interactions=Path("/data/shop/i.csv")))
    movies = TrackingConfig(experiment="e").model_name(DataConfig(movielens=Path("../shared/data/ml-100k")))
    assert (shop, movies) == ("recsys-shop-catalog", "recsys-ml-100k")
    assert TrackingConfig(registered_model="mine").model_name(DataConfig(movielens=Path("x"))) == "mine"
    tracker = Tracker(TrackingConfig(experiment="e"), root=tmp_path)
    with tracker.step("register"):
        a = tracker.register_bundle(_bundle(tmp_path, "movies"), "ndcg@10", 0.30, name=movies, data_fingerprint="m", baselines={"popularity": 0.1})
    with tracker.step("register"):
        b = tracker.register_bundle(_bundle(tmp_path, "shop"), "ndcg@10", 0.05, name=shop, data_fingerprint="s", baselines={"popularity": 0.01})
    assert a.champion and b.champion and (a.name, b.name) == (movies, shop) and a.version == b.version == "1"
    client = _client(tracker.tracking_uri)
    assert client.get_model_version_by_alias(movies, "champion").tags["data_fingerprint"] == "m"
    assert client.get_model_version_by_alias(shop, "champion").tags["data_fingerprint"] == "s"


def test_registry_models_download_once_into_recsys_home(tracker: Tracker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    with tracker.step("register"):
        tracker.register_bundle(_bundle(tmp_path, "v1"), "ndcg@10", 0.1)
    first = resolve_model_uri("models:/test-model@champion", tracking_uri=tracker.tracking_uri)
    again = resolve_model_uri("models:/test-model@champion", tracking_uri=tracker.tracking_uri)
    assert first == again and (tmp_path / "home" / "artifacts" / "models") in first.parents
    assert '"v1"' in (first / "manifest.json").read_text()
    assert not [p for p in (tmp_path / "home" / "artifacts" / "models").iterdir() if p.name.startswith(".")]


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket closes


def test_preflight_names_an_unusable_store(tmp_path: Path) -> None:
    """Unreachable server, a folder that is a file: one clear error at start; a usable store passes."""
    from recsys.tracking import TrackingError

    unreachable = Tracker(TrackingConfig(tracking_uri=f"http://127.0.0.1:{_closed_port()}"))
    with pytest.raises(TrackingError, match=r"tracking.tracking_uri http://127.0.0.1:\d+: the MLflow server does not answer"):
        unreachable.preflight()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(TrackingError, match="is not a writable folder"):
        Tracker(TrackingConfig(tracking_uri=f"sqlite:///{blocker}/mlflow.db")).preflight()
    with pytest.raises(TrackingError, match="not a writable folder"):
        with Tracker(TrackingConfig(tracking_uri=f"sqlite:///{blocker}/mlflow.db")).pipeline_run("p"):
            pass
    Tracker(TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/new/mlflow.db")).preflight()  # a folder to create is fine
    Tracker(TrackingConfig(enabled=False, tracking_uri=f"sqlite:///{blocker}/x.db")).preflight()  # tracking off: no check


def test_a_store_failing_mid_run_turns_tracking_off_and_the_run_goes_on(tracker: Tracker, uri: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.exceptions import MlflowException

    with tracker.pipeline_run("p") as parent:
        tracker.log_metrics({"before": 1.0})

        def broken(*args, **kwargs):
            raise MlflowException("connection reset by the store")

        monkeypatch.setattr(MlflowClient, "log_batch", broken)
        monkeypatch.setattr(MlflowClient, "set_tag", broken)
        with tracker.step("train"):
            tracker.log_metrics({"after": 2.0})  # fails: tracking turns off, no exception
            tracker.set_tags({"t": 1})
            assert tracker.lightning_logger() is None
        assert tracker.register_bundle(Path(uri.removeprefix("sqlite:///")).parent, "ndcg@10", 0.5) is None
    monkeypatch.undo()
    assert tracker.failure.startswith("logging metrics: MlflowException: connection reset")
    assert not tracker.enabled
    assert _client(uri).get_run(parent).data.metrics == {"before": 1.0}


def test_new_experiments_open_in_the_machine_learning_view_with_saved_views(tracker: Tracker, uri: str) -> None:
    """The experiment is marked as classic ML, and carries the dashboard's saved views in the format
    MLflow's own "Save as new view" writes; an older experiment gets the missing ones, a user's edit stays."""
    import base64
    import json
    import zlib

    from recsys import dashboard

    with tracker.step("train"):
        pass
    client = _client(uri)
    exp = client.get_experiment_by_name("test-exp")
    assert exp.tags[dashboard.EXPERIMENT_KIND_TAG] == "custom_model_development"
    envelope = json.loads(exp.tags[dashboard.SAVED_VIEW_PREFIX + dashboard.TRAINING_VIEW])
    assert envelope["name"] == "Training runs" and isinstance(envelope["createdAt"], int)
    state = json.loads(zlib.decompress(base64.b64decode(envelope["state"].removeprefix("deflate;"))))
    assert state["searchFilter"] == "tags.step = 'train'"
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "step"}]
    assert "metrics.`best_valid`" in state["selectedColumns"]

    client.delete_experiment_tag(exp.experiment_id, dashboard.SAVED_VIEW_PREFIX + dashboard.STEPS_VIEW)
    client.set_experiment_tag(exp.experiment_id, dashboard.SAVED_VIEW_PREFIX + dashboard.TRAINING_VIEW, "mine")
    again = Tracker(TrackingConfig(experiment="test-exp"), root=Path(uri.removeprefix("sqlite:///")).parent.parent)
    with again.step("train"):
        pass
    tags = client.get_experiment(exp.experiment_id).tags
    assert tags[dashboard.SAVED_VIEW_PREFIX + dashboard.TRAINING_VIEW] == "mine"
    assert dashboard.SAVED_VIEW_PREFIX + dashboard.STEPS_VIEW in tags


def test_dashboard_prints_the_training_runs_address(tracker: Tracker, uri: str) -> None:
    from recsys import dashboard

    assert dashboard.prepare(uri, "test-exp", "http://127.0.0.1:5000")[0].startswith("No experiment 'test-exp'")
    with tracker.step("train"):
        pass
    exp_id = _client(uri).get_experiment_by_name("test-exp").experiment_id
    lines = dashboard.prepare(uri, "test-exp", "http://127.0.0.1:5000")
    assert lines[0].endswith(f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs?viewStateShareKey=recsys-training-runs"
                             "&workflowType=machine_learning")
    cmd = dashboard.server_command(uri, port=5001)
    assert cmd[1:] == ["ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", "5001", "--workers", "1"]
    assert dashboard.server_env({})["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
