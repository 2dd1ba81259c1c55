"""The dashboard in a real headless browser (Debian's chromium driven by Playwright, no browser
download): `mlflow ui` over a store holding a finished tiny `recsys train` run opens on the training-runs
view, in the classic machine-learning pages, with the run, its metrics and its plots.

Skipped only where no chromium binary exists (`.ci/run` installs it). Screenshots go to the test's
temporary folder, or to $RECSYS_SCREENSHOTS when set."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recsys import dashboard
from recsys.cli import app
from tiny_settings import cli_overrides


def _chromium() -> str | None:
    for name in filter(None, (os.environ.get("RECSYS_CHROMIUM"), "/usr/bin/chromium", "chromium", "chromium-browser")):
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.access(path, os.X_OK):
            return path
    return None


CHROMIUM = _chromium()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium; .ci/run installs it)"),
]
PLOTS = ("curves.png", "baselines.png", "segments.png", "item_map.png", "gallery.png", "gallery.html")
FAST = cli_overrides()


@pytest.fixture(scope="module")
def store(tiny_data, tmp_path_factory) -> dict:
    """A sqlite store with one finished `recsys train` run (its plots included)."""
    from mlflow import MlflowClient

    catalog, interactions = tiny_data
    root = tmp_path_factory.mktemp("dashboard")
    catalog.write_parquet(root / "catalog.parquet")
    interactions.select("user_id", "item_id", "timestamp", "rating").write_parquet(root / "interactions.parquet")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    result = CliRunner().invoke(app, [
        "train", "--catalog", str(root / "catalog.parquet"), "--interactions", str(root / "interactions.parquet"),
        "--out", str(root / "bundle"), "-q", "-s", f"encoders.cache_dir={root / 'cache'}", "-s", f"output_dir={root / 'out'}",
        "-s", f"tracking.tracking_uri={uri}", *FAST], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("recsys")
    run = next(r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("step") == "train")
    listed = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {f"plots/{name}" for name in PLOTS} <= listed
    return {"uri": uri, "experiment_id": experiment.experiment_id, "run": run, "root": root}


def test_the_dashboard_shows_the_run_its_metrics_and_its_plots(store, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) is not installed")
    expect = sync_api.expect
    expect.set_options(timeout=60_000)  # a loaded 2-core CI machine: the first page load takes a while
    shots = Path(os.environ.get("RECSYS_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    run = store["run"]
    exp_id, run_id = store["experiment_id"], run.info.run_id
    best_valid = run.data.metrics["best_valid"]
    with dashboard.running_server(store["uri"], log_path=tmp_path / "mlflow-ui.log") as base, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1500, "height": 850})
        page.set_default_timeout(60_000)
        try:
            # The address `make dashboard` prints: the classic ML pages, the saved "Training runs" view, the run flat.
            page.goto(dashboard.runs_url(base, exp_id))
            expect(page.get_by_role("link", name="train", exact=True)).to_be_visible()
            expect(page.locator('[data-testid="saved-views-trigger"]')).to_have_text("Training runs")
            expect(page.get_by_text("Group: train")).to_be_visible()
            expect(page.get_by_text("best_valid", exact=True)).to_be_visible()  # a metric column of the view
            for genai_only in ("Sessions", "Judges", "Prompts"):  # the GenAI side bar is not shown
                expect(page.get_by_text(genai_only, exact=True)).to_have_count(0)
            dashboard.tidy_page(page)
            page.screenshot(path=shots / "dashboard_runs.png")

            # The run: its metrics, beside the baselines it was measured against.
            page.goto(f"{base}/#/experiments/{exp_id}/runs/{run_id}?workflowType=machine_learning")
            expect(page.get_by_role("heading", name="train")).to_be_visible()
            metrics = page.get_by_placeholder("Search metrics")
            metrics.fill("best_valid")
            expect(page.get_by_text(f"{best_valid:.6g}"[:6]).first).to_be_visible()
            metrics.fill("baseline_valid")
            expect(page.get_by_text("baseline_valid.popularity")).to_be_visible()

            # Its plots: listed under Artifacts, a PNG drawn, the HTML gallery's posters drawn in its frame.
            page.goto(f"{base}/#/experiments/{exp_id}/runs/{run_id}/artifacts/plots/curves.png?workflowType=machine_learning")
            for name in PLOTS:
                expect(page.get_by_text(name, exact=True)).to_be_visible()
            page.wait_for_function("() => Array.from(document.images).some(i => i.src.startsWith('blob:') && i.naturalWidth >= 800)")
            page.get_by_text("gallery.html", exact=True).click()
            posters = page.frame_locator("iframe").locator("img")
            expect(posters.first).to_be_visible()
            assert posters.count() >= 8
            assert posters.first.evaluate("img => img.naturalWidth") > 0
            dashboard.tidy_page(page)
            page.screenshot(path=shots / "dashboard_gallery.png")
        finally:
            browser.close()
    assert (shots / "dashboard_runs.png").stat().st_size > 10_000
