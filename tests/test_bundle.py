"""Bundle round trip, and loud refusal of bundles that disagree with themselves or the encoders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.bundle import SCHEMA_VERSION, BundleError, load_bundle
from recsys.data.histories import Histories
from recsys.recommender import Recommender


@pytest.fixture()
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def _edit_meta(bundle: Path, **changes) -> None:
    meta = json.loads((bundle / "bundle.json").read_text())
    meta.update(changes)
    (bundle / "bundle.json").write_text(json.dumps(meta))


def test_round_trip_reproduces_vectors_and_recommendations(tiny_bundle, tiny_features):
    bundle = load_bundle(tiny_bundle)
    assert bundle.meta["schema_version"] == SCHEMA_VERSION
    assert bundle.meta["encoder_fingerprints"] == tiny_features.fingerprints
    assert list(bundle.features.item_ids) == list(tiny_features.item_ids)
    # The reloaded model recomputes exactly the stored item vectors.
    from recsys.model.two_tower import FeatureTensors

    vectors, bias = bundle.model.encode_items_with_bias(FeatureTensors.from_features(bundle.features))
    np.testing.assert_allclose(vectors, bundle.item_vectors, atol=1e-5)
    np.testing.assert_allclose(bias, bundle.item_bias, atol=1e-5)
    # The index rows are [vector, bias], so a [u, 1] query scores exactly u.v + b.
    item = bundle.features.item_ids[3]
    np.testing.assert_allclose(bundle.index.vector(item), np.append(vectors[3], bias[3]), atol=1e-6)
    a = Recommender(bundle)
    b = Recommender.from_bundle(tiny_bundle)
    user = bundle.users["user_id"][0]
    assert a.recommend_user(user, 5).item_ids == b.recommend_user(user, 5).item_ids
    assert a.model_version == b.model_version == bundle.meta["model_version"]


def test_missing_file_is_refused(bundle_copy):
    (bundle_copy / "model.pt").unlink()
    with pytest.raises(BundleError, match="missing model.pt"):
        load_bundle(bundle_copy)


def test_schema_version_mismatch_is_refused(bundle_copy):
    _edit_meta(bundle_copy, schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(BundleError, match="schema_version"):
        load_bundle(bundle_copy)


def test_fingerprint_mismatch_is_refused(bundle_copy):
    meta = json.loads((bundle_copy / "bundle.json").read_text())
    fingerprints = {k: v + "-other" for k, v in meta["encoder_fingerprints"].items()}
    _edit_meta(bundle_copy, encoder_fingerprints=fingerprints)
    with pytest.raises(BundleError, match="fingerprints"):
        load_bundle(bundle_copy)


def test_running_encoder_with_other_fingerprint_is_refused(tiny_bundle):
    with pytest.raises(BundleError, match="text encoder fingerprint mismatch"):
        load_bundle(tiny_bundle, expected_fingerprints={"text": "text:some-other-model:w0"})


def test_dimension_mismatch_is_refused(bundle_copy):
    meta = json.loads((bundle_copy / "bundle.json").read_text())
    shape = dict(meta["model_shape"], dim=meta["model_shape"]["dim"] * 2)
    _edit_meta(bundle_copy, model_shape=shape)
    with pytest.raises(BundleError, match="model.pt does not fit|shape"):
        load_bundle(bundle_copy)


def test_replaced_vectors_are_refused(bundle_copy):
    vectors = np.load(bundle_copy / "item_vectors.npy")
    np.save(bundle_copy / "item_vectors.npy", vectors[:, :-1])
    with pytest.raises(BundleError, match="item_vectors.npy"):
        load_bundle(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a directory"):
        load_bundle(tmp_path / "nope")


@pytest.fixture(scope="module")
def hybrid_bundle(tiny_data, tiny_features, tmp_path_factory, make_config) -> Path:
    """A bundle of a hybrid model (content + identity residuals for the items seen in training), shaped
    like the ml-1m config: a mean user tower, MLP heads, learned vector lengths, trained all-but-one on
    sampled targets."""
    from pipelines.train import build_bundle, holdout_last
    from recsys.model.train import fit_two_tower

    catalog, interactions = tiny_data
    tmp = tmp_path_factory.mktemp("hybrid")
    cfg = make_config(tmp, **{
        "model.item_id_embedding": True, "model.user_pooling": "mean", "model.head_hidden": 16,
        "model.item_scale": True, "model.user_scale": True,
        "train.objective": "all_but_one", "train.targets_per_window": 4,
    })
    train, valid = holdout_last(interactions, cfg.train.seed)
    result = fit_two_tower(tiny_features, train, valid, cfg, show_progress=False)
    return build_bundle(cfg, tmp / "bundle", catalog, interactions, tiny_features, result)


def test_hybrid_bundle_round_trip_keeps_identity_residuals(hybrid_bundle, tiny_data):
    from recsys.model.two_tower import FeatureTensors

    bundle = load_bundle(hybrid_bundle)
    assert bundle.model.item_tower.heads["text"][1].out_features == 16  # the MLP heads come back from the config
    known = set(bundle.meta["item_id_vocab"])
    assert 0 < len(known) == bundle.meta["model_shape"]["n_id_items"]
    assert known <= {str(i) for i in tiny_data[1]["item_id"].unique().to_list()}  # only ids seen in training
    tensors = bundle.model.feature_tensors(bundle.features)
    vectors, bias = bundle.model.encode_items_with_bias(tensors)
    np.testing.assert_allclose(vectors, bundle.item_vectors, atol=1e-5)
    np.testing.assert_allclose(bias, bundle.item_bias, atol=1e-5)
    # Learned lengths come back with the weights: each item its own, and the index holds them.
    lengths = np.linalg.norm(bundle.item_vectors, axis=1)
    assert lengths.std() > 1e-4 and not np.allclose(lengths, 1.0)
    item = bundle.features.item_ids[1]
    np.testing.assert_allclose(bundle.index.vector(item), np.append(vectors[1], bias[1]), atol=1e-6)
    # Trained residuals move the known items away from their content-only vectors (a rare item can
    # have had its residual dropped at each of its few occurrences in 2 epochs); unknown ones never move.
    content, _ = bundle.model.encode_items_with_bias(FeatureTensors.from_features(bundle.features))
    moved = np.abs(vectors - content).max(axis=1) > 1e-4
    assert moved[tensors.id_index.numpy() > 0].mean() > 0.8
    assert not moved[tensors.id_index.numpy() == 0].any()


def test_item_added_to_a_hybrid_model_is_served_from_content(hybrid_bundle):
    rec = Recommender.from_bundle(hybrid_bundle)
    known_id = rec.bundle.features.item_ids[0]
    title = rec.bundle.catalog.filter(pl.col("item_id") == known_id)["title"][0]
    new_id = max(rec.bundle.features.item_ids) + 1000
    rec.add_item(new_id, title=title)
    vector = rec.index.vector(new_id)[:-1]
    content, _ = rec.embed_items(pl.DataFrame({"item_id": [new_id], "title": [title], "text": [None], "image": [None], "categories": [[]]}, schema_overrides={"categories": pl.List(pl.String)}))
    np.testing.assert_allclose(vector, content[0], atol=1e-6)


def test_identity_vocabulary_must_match_the_weights(hybrid_bundle, tmp_path):
    copy = Path(shutil.copytree(hybrid_bundle, tmp_path / "bundle"))
    meta = json.loads((copy / "bundle.json").read_text())
    _edit_meta(copy, item_id_vocab=meta["item_id_vocab"][:-1])
    with pytest.raises(BundleError, match="item_id_vocab"):
        load_bundle(copy)


def test_ensemble_bundle_serves_the_mean_score_through_one_index(tiny_data, tiny_features, tmp_path, make_config):
    """An ensemble (model.ensemble_size) is stored, reloaded and served like one model with wider vectors."""
    from pipelines.train import build_bundle, holdout_last
    from recsys.model.train import fit_two_tower
    from recsys.model.two_tower import TwoTowerEnsemble

    catalog, interactions = tiny_data
    cfg = make_config(tmp_path, **{"model.ensemble_size": 2, "model.item_id_embedding": True, "train.epochs": 1})
    train, valid = holdout_last(interactions, cfg.train.seed)
    result = fit_two_tower(tiny_features, train, valid, cfg, show_progress=False)
    bundle_dir = build_bundle(cfg, tmp_path / "bundle", catalog, interactions, tiny_features, result)
    bundle = load_bundle(bundle_dir)
    assert isinstance(bundle.model, TwoTowerEnsemble)
    assert bundle.meta["model_shape"]["members"] == 2 and bundle.item_vectors.shape[1] == 2 * cfg.model.dim
    vectors, bias = bundle.model.encode_items_with_bias(bundle.model.feature_tensors(bundle.features))
    np.testing.assert_allclose(vectors, bundle.item_vectors, atol=1e-5)
    np.testing.assert_allclose(bias, bundle.item_bias, atol=1e-5)
    # What the index returns for a history is the mean of the two members' scores.
    rec = Recommender(bundle)
    history = list(interactions["item_id"].head(5))
    top = rec.recommend_history(history, 5)
    rows = np.asarray([rec._row_of[i] for i in history if i in rec._row_of])
    mean = np.zeros(len(vectors))
    for member in bundle.model.members:
        v, b = member.encode_items_with_bias(bundle.model.feature_tensors(bundle.features))
        mean += (member.encode_histories(v, [rows])[0] @ v.T + b) / 2
    for item, score in zip(top.item_ids, top.scores):
        assert score == pytest.approx(mean[rec._row_of[item]], abs=1e-4)
    # A new item is embedded by every member from its content; search goes through both text heads.
    rec.add_item(50_000, "Galactic Heist (2024)", text="A crew of thieves robs a space station.")
    hits = rec.search("Galactic Heist (2024). A crew of thieves robs a space station.", 3)
    assert hits.item_ids[0] == 50_000 and hits.scores[0] == pytest.approx(1.0, abs=1e-4)
    # A bundle whose config disagrees with its weights is refused.
    copy = Path(shutil.copytree(bundle_dir, tmp_path / "copy"))
    _edit_meta(copy, model_shape={**bundle.meta["model_shape"], "members": 3})
    with pytest.raises(BundleError, match="members 3"):
        load_bundle(copy)


@pytest.mark.parametrize("new_items, members", [("none", 1), ("content", 2)])
def test_item_item_bundle_serves_the_block_and_embeds_new_items_from_content(
    tiny_data, tiny_features, tmp_path, make_config, new_items, members
):
    """model.item_item: the block (and its content map) is saved with the weights, reloaded, and served
    through the same index; with members=2 and the content map this is the shipped configuration's shape
    (an ensemble wrapped with the block, new items scored through the map)."""
    from pipelines.train import build_bundle, holdout_last
    from recsys.model.train import fit_two_tower
    from recsys.model.two_tower import ItemItemBlend

    catalog, interactions = tiny_data
    cfg = make_config(tmp_path, **{"model.item_item": "ease", "model.item_item_rank": 8, "train.epochs": 1,
                                   "model.item_item_new_items": new_items, "model.ensemble_size": members})
    towers_dim = cfg.model.dim * members
    train, valid = holdout_last(interactions, cfg.train.seed)
    result = fit_two_tower(tiny_features, train, valid, cfg, show_progress=False)
    assert result.item_item["kept"]
    bundle = load_bundle(build_bundle(cfg, tmp_path / "bundle", catalog, interactions, tiny_features, result))
    assert isinstance(bundle.model, ItemItemBlend) and bundle.item_vectors.shape[1] == towers_dim + 8 + 1
    assert float(bundle.model.block_weight) == pytest.approx(result.item_item["weight"])
    assert bundle.meta["model_shape"]["item_item_rank"] == 8 and len(bundle.meta["item_id_vocab"]) > 0
    rec = Recommender(bundle)
    history = list(interactions["item_id"].head(5))
    rows = np.asarray([rec._row_of[i] for i in history if i in rec._row_of])
    vectors, bias = bundle.model.encode_items_with_bias(bundle.model.feature_tensors(bundle.features))
    np.testing.assert_allclose(vectors, bundle.item_vectors, atol=1e-5)
    expected = bundle.model.encode_histories(vectors, [rows])[0] @ vectors.T + bias
    top = rec.recommend_history(history, 5)
    for item, score in zip(top.item_ids, top.scores):
        assert score == pytest.approx(expected[rec._row_of[item]], abs=1e-4)
    # A known user's vector ages the history by its timestamps, saved with the bundle: items logged at
    # the same time weigh alike, here with a recency decay that shows it.
    users = bundle.users
    tied_user = next(
        i for i, times in enumerate(users["history_times"].to_list()) if len(set(times)) < len(times) and len(times) > 2
    )
    bundle.model.block_decay.fill_(0.5)
    aged = Recommender(bundle)
    user_rows = np.asarray([aged._row_of[i] for i in users["history"][tied_user].to_list()])
    by_time = bundle.model.encode_histories(vectors, Histories([user_rows], [users["history_times"][tied_user].to_numpy()]))
    np.testing.assert_allclose(aged._user_vectors[tied_user, :-1], by_time[0], atol=1e-5)
    assert not np.allclose(by_time, bundle.model.encode_histories(vectors, [user_rows]))
    # An anonymous history with its timestamps is aged the same way (items unknown to the model dropped).
    tied = [7, 7, 7, 9, 9]
    expected = bundle.model.encode_histories(vectors, Histories([rows], [tied]))[0] @ vectors.T + bias
    top = aged.recommend_history(history + ["no-such-item"], 5, times=tied + [11])
    for item, score in zip(top.item_ids, top.scores):
        assert score == pytest.approx(expected[aged._row_of[item]], abs=1e-4)
    with pytest.raises(ValueError, match="times: expected one per history item"):
        aged.recommend_history(history, 5, times=tied[:2])
    # A new item gets content only: a zero block, or with the content map a predicted item side (and
    # s = 0, so it adds nothing to histories); text search still finds it by its text.
    rec.add_item(50_000, "Galactic Heist (2024)", text="A crew of thieves robs a space station.")
    new_block = rec._vectors[rec._row_of[50_000], towers_dim:]
    if new_items == "none":
        assert not new_block.any()
    else:
        assert np.abs(new_block[:8]).sum() > 0 and new_block[8] == 0.0
        assert bundle.model.block_content_map.abs().sum() > 0
    hits = rec.search("Galactic Heist (2024). A crew of thieves robs a space station.", 3)
    # Search scores are the frozen text cosine alone: no block term for the query (issue 19's fix).
    assert hits.item_ids[0] == 50_000 and hits.scores[0] == pytest.approx(1.0, abs=1e-4)
    assert all(-1.0 - 1e-4 <= score <= 1.0 + 1e-4 for score in hits.scores)
    similar = rec.similar_items(history[0], 3)
    assert history[0] not in similar.item_ids and len(similar.item_ids) == 3


def test_content_knn_bundle_serves_the_model_plus_weighted_content_knn(tiny_data, tiny_features, tmp_path, make_config):
    """model.content_knn: what the index returns for a history is the model's score plus the weight times
    content-kNN's cosine (the baseline's own scorer), after a save and reload; a new item is scored too."""
    from pipelines.train import build_bundle, holdout_last
    from recsys.eval.baselines import ContentKNNScorer, frozen_content_embeddings
    from recsys.model.train import fit_two_tower
    from recsys.model.two_tower import ContentKNNBlend

    catalog, interactions = tiny_data
    cfg = make_config(tmp_path, **{"model.content_knn": True, "train.epochs": 1, "model.item_item": "ease",
                                   "model.item_item_rank": 8, "train.content_knn_weights": [2.0]})
    train, valid = holdout_last(interactions, cfg.train.seed)
    result = fit_two_tower(tiny_features, train, valid, cfg, show_progress=False)
    # Pinned by the config: the wrapper stays; its weight is 0 unless a weight wins on held-out users.
    assert result.content_knn["kept"] and result.content_knn["weight_relative"] in (0.0, 2.0, 1000.0)
    bundle = load_bundle(build_bundle(cfg, tmp_path / "bundle", catalog, interactions, tiny_features, result))
    model = bundle.model
    assert isinstance(model, ContentKNNBlend) and float(model.content_weight) == pytest.approx(result.content_knn["weight"])
    model.set_weight(0.7)  # a weight that shows the content term in every score below
    assert bundle.item_vectors.shape[1] == model.base.dim + model.content_width
    rec = Recommender(bundle)
    history = list(interactions["item_id"].head(6))
    rows = np.asarray([rec._row_of[i] for i in history])
    base_vectors, base_bias = model.base.encode_items_with_bias(model.feature_tensors(bundle.features))
    content = ContentKNNScorer(frozen_content_embeddings(bundle.features)).score([rows], None)[0]
    expected = model.base.encode_histories(base_vectors, [rows])[0] @ base_vectors.T + base_bias + float(model.content_weight) * content
    top = rec.recommend_history(history, 5)
    for item, score in zip(top.item_ids, top.scores):
        assert score == pytest.approx(expected[rec._row_of[item]], rel=1e-4, abs=1e-3)
    rec.add_item(50_000, "Galactic Heist (2024)", text="A crew of thieves robs a space station.")
    assert np.abs(rec._vectors[rec._row_of[50_000], model.base.dim:-1]).sum() > 0  # its content row (the last column is the bias)
