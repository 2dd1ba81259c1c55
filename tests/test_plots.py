"""The run plots (recsys/plots.py): segment numbers, every figure on real sample rows, the poster
gallery as PNG and self-contained HTML, and that a failing plot never fails the step."""

from __future__ import annotations

import logging

import numpy as np
import polars as pl
import pytest

from recsys import plots
from recsys.eval.metrics import per_user
from recsys.eval.protocol import EvalQueries


def _queries() -> EvalQueries:
    histories = [np.arange(n) % 7 for n in (2, 3, 5, 8, 13, 21)]
    targets = [np.array([t]) for t in (7, 8, 9, 7, 8, 9)]
    return EvalQueries(np.arange(6), histories, targets, [np.unique(h) for h in histories])


def test_segment_metrics_split_users_by_history_and_items_by_training_count():
    queries = _queries()
    popularity = np.array([50, 40, 30, 20, 10, 5, 5, 0, 3, 100])  # item 7 new, 8 tail, 9 head
    ranked = {"recsys": np.array([[7, 1], [8, 1], [1, 2], [1, 7], [8, 2], [9, 1]]),
              "popularity": np.tile([9, 0], (6, 1))}
    seg = plots.segment_metrics(queries, ranked, popularity, "hr@2")
    users = seg.filter((pl.col("group") == "users by history length") & (pl.col("model") == "recsys"))
    assert users["n_queries"].sum() == 6 and users["key"].to_list() == ["users_short", "users_medium", "users_long"]
    overall = per_user("hr", ranked["recsys"], queries.targets, 2)
    assert np.isclose((users["value"] * users["n_queries"]).sum() / 6, overall.mean())
    items = {r["key"]: r for r in seg.filter((pl.col("group") == "target items by training count") & (pl.col("model") == "recsys")).iter_rows(named=True)}
    assert items["items_new"]["n_queries"] == 2 and items["items_new"]["value"] == 1.0  # users 0 and 3 target item 7: both hit
    assert items["items_tail"]["n_queries"] == 2 and items["items_tail"]["value"] == 1.0
    assert items["items_head"]["n_queries"] == 2 and items["items_head"]["value"] == 0.5
    pop = {r["key"]: r["value"] for r in seg.filter((pl.col("model") == "popularity") & (pl.col("group") != "users by history length")).iter_rows(named=True)}
    assert pop == {"items_new": 0.0, "items_tail": 0.0, "items_head": 1.0}


def test_history_buckets_cover_every_query():
    lengths = np.array([1, 1, 1, 1, 2, 50])
    bucket, labels = plots.history_buckets(lengths)
    assert bucket.min() == 0 and bucket.max() == len(labels) - 1
    assert len(labels) >= 2 and labels[0] == "1 items"


def test_figures_on_sample_rows_save_as_png(tmp_path, tiny_data):
    catalog, _ = tiny_data
    rng = np.random.default_rng(0)
    history = [{"epoch": e, "train/loss": 5 - e, "valid/ndcg_at_10": 0.1 + 0.01 * e, "valid/recall_at_10": 0.2 + 0.01 * e} for e in range(4)]
    seg = plots.segment_metrics(_queries(), {"recsys": np.tile([7, 8], (6, 1))}, np.arange(10), "ndcg@2")
    figures = {
        "curves": plots.curves_figure(history, "valid/ndcg_at_10", 2, [{"epoch": e, "train/loss": 4.5 - e} for e in range(3)]),
        "baselines": plots.baselines_figure("ndcg@10", 0.12, {"popularity": 0.1, "content_knn": 0.05}),
        "protocols": plots.protocols_figure({"loo": {"recsys": {"ndcg@10": 0.1}, "popularity": {"ndcg@10": 0.05}},
                                             "cold": {"recsys": {"ndcg@10": 0.3}, "popularity": {"ndcg@10": 0.08}}}),
        "segments": plots.segments_figure(seg, "ndcg@2"),
        "item_map": plots.item_map_figure(rng.normal(size=(catalog.height, 8)), catalog["categories"].to_list(),
                                          catalog["title"].to_list(), rng.integers(0, 50, catalog.height)),
    }
    for name, fig in figures.items():
        path = tmp_path / f"{name}.png"
        fig.savefig(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000, name
    assert plots.curves_figure([], None) is None


def test_pca_keeps_the_two_widest_directions():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3)) * np.array([10.0, 3.0, 0.1])
    xy = plots.pca_2d(x)
    assert xy.shape == (200, 2) and xy[:, 0].std() > xy[:, 1].std() > 1.0


def test_poster_gallery_png_and_self_contained_html(tiny_data):
    catalog, _ = tiny_data
    ids = catalog["item_id"].to_list()
    rows = [plots.GalleryRow(1, ids[:5], ids[10:15], 40), plots.GalleryRow(2, ids[20:23] + [999_999], ids[30:35], 3)]
    image = plots.poster_gallery(rows, catalog)
    assert image.width > 10 * 96 and image.height > 2 * 140
    page = plots.gallery_html(rows, catalog)
    assert page.count("data:image/jpeg;base64,") == 18  # every poster embedded; the unknown item gets a title card
    assert 'class="blank">999999<' in page and "src=\"/" not in page and "posters/" not in page


def test_pick_gallery_users_is_seeded_and_prefers_middle_histories():
    lengths = {u: (5 if u % 2 else 30) for u in range(40)}
    picked = plots.pick_gallery_users(lengths, 4, seed=3)
    assert picked == plots.pick_gallery_users(lengths, 4, seed=3) and len(picked) == 4
    assert all(lengths[u] == 30 for u in picked)


def test_a_failing_plot_logs_a_warning_and_the_step_goes_on(caplog):
    class Enabled:
        enabled = True

    with caplog.at_level(logging.WARNING, logger="recsys.plots"):
        assert plots.log_protocol_plots(Enabled(), None) is None  # a bad argument: skipped, not raised
        plots.log_evaluation_plots(Enabled(), "loo", None, {}, None, "ndcg@10")
    assert sum("skipped" in r.message for r in caplog.records) == 2


@pytest.mark.slow
def test_validation_segments_reuse_the_early_stopping_queries(tiny_data, tiny_features, tmp_path, make_config):
    """The segments are measured on the same validation users and ranking as the model's best_valid."""
    from pipelines.train import holdout_last
    from recsys.model.train import fit_two_tower

    _, interactions = tiny_data
    cfg = make_config(tmp_path, **{"train.epochs": 1})
    train, valid = holdout_last(interactions, cfg.train.seed)
    result = fit_two_tower(tiny_features, train, valid, cfg, show_progress=False)
    seg = plots.validation_segments(tiny_features, train, valid, result)
    users = seg.filter((pl.col("group") == "users by history length") & (pl.col("model") == "recsys"))
    mean = (users["value"] * users["n_queries"]).sum() / users["n_queries"].sum()
    assert mean == pytest.approx(result.best_metric, abs=1e-9)
    assert set(seg["model"].unique()) == {"recsys", "popularity", "content_knn"}
    pop = seg.filter((pl.col("model") == "popularity") & (pl.col("group") == "users by history length"))
    assert ((pop["value"] * pop["n_queries"]).sum() / pop["n_queries"].sum()) == pytest.approx(result.baselines["popularity"], abs=1e-9)
