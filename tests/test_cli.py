"""The CLI contract other tools call (`recsys train`, `recsys recommend`), clear errors on bad input,
and a full `recsys run` tracked in MLflow (parent + nested runs, params, curves, artifacts, alias)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from recsys.cli import app
from tiny_settings import cli_overrides

runner = CliRunner()

FAST = cli_overrides()  # test_train_with_the_recipe runs the default recipe


@pytest.fixture(scope="module")
def files(tiny_data, tmp_path_factory) -> dict[str, Path]:
    catalog, interactions = tiny_data
    root = tmp_path_factory.mktemp("cli")
    paths = {"catalog": root / "catalog.parquet", "interactions": root / "interactions.csv", "root": root}
    catalog.write_parquet(paths["catalog"])
    interactions.select("user_id", "item_id", "timestamp", "rating").write_csv(paths["interactions"])
    return paths


def _invoke(args: list[str]):
    result = runner.invoke(app, args, catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def trained(files) -> Path:
    root = files["root"]
    out = root / "bundle"
    result = _invoke(
        ["train", "--catalog", str(files["catalog"]), "--interactions", str(files["interactions"]), "--out", str(out), "-q",
         "-s", f"encoders.cache_dir={root / 'cache'}", "-s", f"output_dir={root / 'out'}",
         "-s", f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}", *FAST]
    )
    assert result.exit_code == 0, result.output
    assert "bundle:" in result.output and "registered:" in result.output
    return out


def test_train_writes_a_loadable_bundle(trained):
    from recsys.bundle import load_bundle

    bundle = load_bundle(trained)
    assert bundle.meta["n_items"] == 120
    assert bundle.users.height == 150


def test_recommend_contract(trained, files, tiny_data):
    _, interactions = tiny_data
    root = files["root"]
    users = interactions["user_id"].unique().sort().head(10)
    pl.DataFrame({"user_id": users}).write_parquet(root / "users.parquet")
    candidates = interactions["item_id"].unique().sort().head(60)
    pl.DataFrame({"item_id": candidates}).write_parquet(root / "items.parquet")
    out = root / "recs.parquet"
    result = _invoke(
        ["recommend", "--bundle", str(trained), "--users", str(root / "users.parquet"), "--k", "5", "--out", str(out),
         "--exclude-seen", "--candidates", str(root / "items.parquet"), "-q"]
    )
    assert result.exit_code == 0, result.output
    recs = pl.read_parquet(out)
    assert recs.columns == ["user_id", "item_id", "rank", "score", "fallback"]
    assert set(recs["user_id"].unique().to_list()) <= set(users.to_list())
    assert set(recs["item_id"].to_list()) <= set(candidates.to_list())
    seen = interactions.select("user_id", "item_id").rows()
    assert not set(recs.select("user_id", "item_id").rows()) & set(seen)
    assert recs["rank"].min() == 1


def test_bad_interactions_give_a_clear_error(files, tmp_path):
    bad = tmp_path / "bad.csv"
    pl.read_csv(files["interactions"]).drop("user_id").write_csv(bad)
    result = runner.invoke(app, ["train", "--catalog", str(files["catalog"]), "--interactions", str(bad), "--out", str(tmp_path / "b"), "-q", "-s", "tracking.enabled=false", *FAST])
    assert result.exit_code == 2
    assert "bad.csv" in result.output and "user_id" in result.output


def test_recommend_users_file_without_user_id_column(trained, tmp_path):
    users = tmp_path / "users.parquet"
    pl.DataFrame({"customer": [1, 2]}).write_parquet(users)
    result = runner.invoke(app, ["recommend", "--bundle", str(trained), "--users", str(users), "--out", str(tmp_path / "r.parquet")])
    assert result.exit_code == 2
    assert "users.parquet" in result.output and "user_id" in result.output
    assert not (tmp_path / "r.parquet").exists()


def test_run_is_tracked_in_mlflow(files, tmp_path):
    from mlflow import MlflowClient

    db = tmp_path / "mlflow.db"
    result = _invoke(
        ["run", "--catalog", str(files["catalog"]), "--interactions", str(files["interactions"]), "-q",
         "-s", f"encoders.cache_dir={tmp_path / 'cache'}", "-s", f"output_dir={tmp_path / 'out'}",
         "-s", f"tracking.tracking_uri=sqlite:///{db}", "-s", "eval.protocols=[loo]", *FAST]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "recommendations.parquet").exists()
    assert (tmp_path / "out" / "report" / "report.md").exists()
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("recsys")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.params["train.epochs"] == "2"
    children = {r.data.tags.get("step"): r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert {"embed", "train", "recommend", "evaluate-loo"} <= set(children)
    curve = client.get_metric_history(children["train"].info.run_id, "valid/ndcg_at_10")
    assert len(curve) == 2
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "config.yaml" in artifacts
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.json"} <= report
    assert "recsys.ndcg_at_10" in children["evaluate-loo"].data.metrics
    # The plots (recsys/plots.py): the train step's, each protocol's segments, the protocols chart beside the
    # report; and the dashboard's address of the training runs.
    train_plots = {a.path for a in client.list_artifacts(children["train"].info.run_id, "plots")}
    assert {f"plots/{name}" for name in ("curves.png", "baselines.png", "segments.png", "segments.csv", "item_map.png",
                                         "gallery.png", "gallery.html")} <= train_plots
    assert "valid_segment.users_short" in children["train"].data.metrics
    assert "plots/segments.png" in {a.path for a in client.list_artifacts(children["evaluate-loo"].info.run_id, "plots")}
    assert "plots/protocols.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert f"#/experiments/{experiment.experiment_id}/runs?viewStateShareKey=recsys-training-runs" in result.output
    # The registered name comes from the data (catalog folder + file), and the version carries the
    # data fingerprint and the same-split baselines; it is champion exactly when it beats them.
    name = f"recsys-{files['catalog'].parent.name}-catalog"
    version = client.get_model_version(name, "1")
    assert version.run_id == children["train"].info.run_id
    tags = version.tags
    assert len(tags["data_fingerprint"]) == 64
    baselines = {k: float(v) for k, v in tags.items() if k.startswith("baseline:")}
    assert set(baselines) == {"baseline:popularity", "baseline:content_knn"}
    metric = next(float(v) for k, v in tags.items() if k.startswith("metric:"))
    beats = all(metric > v for v in baselines.values())
    aliases = client.get_registered_model(name).aliases
    assert ("champion" in aliases) == beats


def test_train_with_the_recipe_records_its_choices_and_refits_on_everything(files, tmp_path):
    """`recsys train` with no model settings: the recipe chooses on validation, the bundle keeps the
    resolved config and every choice with its reason, MLflow has them, and the served model was refit
    on all interactions (each user's last one included)."""
    import json

    from mlflow import MlflowClient

    from recsys.bundle import load_bundle

    db = tmp_path / "mlflow.db"
    out = tmp_path / "bundle"
    result = _invoke(
        ["train", "--catalog", str(files["catalog"]), "--interactions", str(files["interactions"]), "--out", str(out), "-q",
         "-s", f"encoders.cache_dir={tmp_path / 'cache'}", "-s", "encoders.image.enabled=false",
         "-s", f"tracking.tracking_uri=sqlite:///{db}", "-s", "train.epochs=2", "-s", "train.budget_minutes=5"]
    )
    assert result.exit_code == 0, result.output
    bundle = load_bundle(out)
    choices = {c["key"]: c for c in bundle.meta["recipe"]}
    assert choices["model.user_pooling"]["value"] == "attention"  # ml-100k rows carry their timestamps
    assert "time-ordered" in choices["model.user_pooling"]["reason"]
    assert choices["model.ensemble_size"]["value"] == bundle.config.model.ensemble_size
    assert all(c["reason"] for c in bundle.meta["recipe"]) and bundle.meta["recipe_fits"] >= 3
    assert choices["recipe.refit_minutes"]["value"] > 0  # the budget held time for the refit below
    assert "trained in" in result.output and "of the 5-minute budget" in result.output
    assert not bundle.config.train.tune
    interactions = pl.read_csv(files["interactions"])
    assert bundle.meta["refit"]["interactions"] == interactions.unique(["user_id", "item_id"]).height
    assert len(bundle.meta["refit"]["epochs"]) == bundle.config.model.ensemble_size
    # The refit rebuilt the item-item block at the settings validation picked, its content map included.
    assert bundle.config.model.item_item == "ease" and bundle.config.model.item_item_new_items == "content"
    block = bundle.model
    while not hasattr(block, "block_content_sharpness"):
        block = block.base
    assert float(block.block_content_sharpness) in bundle.config.train.item_item_content_sharpness
    assert float(block.block_content_sharpness) > 0  # a kernel map: the default grid has no linear one
    assert len(block.block_content_anchors) == len(block.item_id_vocab) == block.block_content_map.shape[0] - 1
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("recsys").experiment_id])
    train_run = next(r for r in runs if r.data.tags.get("step") == "train")
    assert train_run.data.params["chosen.model.user_pooling"] == "attention"
    recorded = client.download_artifacts(train_run.info.run_id, "recipe/recipe.json", str(tmp_path))
    assert json.loads(Path(recorded).read_text()) == bundle.meta["recipe"]


def test_evaluate_temporal_refits_on_the_validation_window(files, tmp_path):
    """The temporal protocol validates on the window of time before the cut, so the model is learned again
    on train + valid before the test, and its popularity baseline counts the same rows."""
    import json

    result = _invoke(
        ["evaluate", "--catalog", str(files["catalog"]), "--interactions", str(files["interactions"]), "-q",
         "--out", str(tmp_path / "report"), "-s", f"encoders.cache_dir={files['root'] / 'cache'}",
         "-s", "tracking.enabled=false", "-s", "eval.protocols=[temporal]", *FAST]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    split = report["meta"]["protocols"]["temporal"]
    assert split["valid_cutoff"] < split["cutoff"] and split["refit_before_test"] is True
    recsys = report["results"]["temporal"]["recsys"]
    assert recsys["refit_seconds"] > 0 and 0.0 <= recsys["ndcg@10"] <= 1.0
    assert recsys["train_seconds"] > recsys["refit_seconds"]  # the fit on train, then the refit on train + valid


def test_an_unreachable_tracking_server_stops_the_job_at_start(files, tmp_path):
    """One line, before any embedding or training (MLflow alone retries each call for minutes)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = runner.invoke(app, [
        "train", "--catalog", str(files["catalog"]), "--interactions", str(files["interactions"]), "--out", str(tmp_path / "b"),
        "-q", "-s", f"encoders.cache_dir={tmp_path / 'cache'}", "-s", f"tracking.tracking_uri=http://127.0.0.1:{port}", *FAST])
    assert result.exit_code == 2
    assert f"tracking.tracking_uri http://127.0.0.1:{port}: the MLflow server does not answer" in result.output
    assert "tracking.enabled=false" in result.output
    assert not (tmp_path / "cache").exists() and not (tmp_path / "b").exists()


def test_a_store_failing_mid_run_keeps_the_trained_bundle(files, tmp_path, monkeypatch):
    """The store breaks once training starts (every later call fails): the job finishes, the bundle is
    complete, and the exit code (3) and one line say the run's record is incomplete."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    import pipelines.train as train_step
    from recsys.bundle import load_bundle

    real_fit, real_log_batch = train_step.fit_two_tower, MlflowClient.log_batch
    broken = {"now": False}

    def log_batch(self, *args, **kwargs):
        if broken["now"]:
            raise MlflowException("the tracking server went away")
        return real_log_batch(self, *args, **kwargs)

    def fit_then_break(*args, **kwargs):
        broken["now"] = True
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", log_batch)
    monkeypatch.setattr(train_step, "fit_two_tower", fit_then_break)
    out = tmp_path / "bundle"
    result = runner.invoke(app, [
        "train", "--catalog", str(files["catalog"]), "--interactions", str(files["interactions"]), "--out", str(out), "-q",
        "-s", f"encoders.cache_dir={files['root'] / 'cache'}", "-s", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *FAST])
    assert result.exit_code == 3, result.output
    assert "MLflow tracking failed mid-run" in result.output and "the tracking server went away" in result.output
    assert f"bundle: {out}" in result.output and "registered:" not in result.output
    assert load_bundle(out).meta["n_items"] == 120
