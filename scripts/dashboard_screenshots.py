"""Screenshots of the dashboard over a store (default: the project's, which `make demo` writes) for the docs:
the training-runs view, the runs-by-step view, and the latest train run's poster gallery, in a real
headless chromium (Debian's; Playwright drives it, nothing is downloaded). Needs the `test` extra.

    .venv/bin/python scripts/dashboard_screenshots.py --out docs/img
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from mlflow import MlflowClient
    from playwright.sync_api import expect, sync_playwright

    from recsys import dashboard, plots
    from recsys.tracking import default_tracking_uri

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default=None)
    parser.add_argument("--experiment", default="recsys")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    store = args.store or default_tracking_uri()
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        print(f"no experiment {args.experiment!r} in {store}: run `make demo` first", file=sys.stderr)
        return 2
    dashboard.ensure_experiment_tags(client, experiment.experiment_id, experiment.tags)
    train = client.search_runs([experiment.experiment_id], "tags.step = 'train'", max_results=1,
                               order_by=["attributes.start_time DESC"])[0]
    args.out.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=60_000)
    exp_id, run_id = experiment.experiment_id, train.info.run_id

    def shot(page, name: str) -> None:
        from PIL import Image

        path = args.out / name
        page.screenshot(path=path)
        plots.save_png(Image.open(path), path)  # 256 colours: a UI screenshot stays well under 200 KB
        print(path, path.stat().st_size // 1024, "KB")

    with dashboard.running_server(store) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 640})
        page.goto(dashboard.runs_url(base, exp_id, dashboard.TRAINING_VIEW))
        expect(page.get_by_role("link", name="train", exact=True).first).to_be_visible()
        dashboard.tidy_page(page)
        shot(page, "dashboard_training_runs.png")
        page.close()  # a saved view applies to an address without search settings: open the next one afresh
        page = browser.new_page(viewport={"width": 1400, "height": 640})
        page.goto(dashboard.runs_url(base, exp_id, dashboard.STEPS_VIEW))
        expect(page.locator('[data-testid="saved-views-trigger"]')).to_have_text("Runs by step")
        expect(page.get_by_text("Group: train")).to_be_visible()
        dashboard.tidy_page(page)
        shot(page, "dashboard_runs_by_step.png")
        page.set_viewport_size({"width": 1400, "height": 900})
        page.goto(f"{base}/#/experiments/{exp_id}/runs/{run_id}/artifacts/plots/gallery.png?workflowType=machine_learning")
        page.get_by_text("gallery.html", exact=True).click()
        expect(page.frame_locator("iframe").locator("img").first).to_be_visible()
        dashboard.tidy_page(page)
        shot(page, "dashboard_gallery.png")
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
