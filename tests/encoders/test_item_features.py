"""ItemFeatures build, save/load and subset on a tiny real catalog."""

import numpy as np
import polars as pl
import pytest

from recsys.config import EncodersConfig
from recsys.encoders import FeatureStore, ItemFeatures, build_item_features, load_encoders


def test_load_encoders_caches_instances_and_skips_disabled(text_encoder):
    cfg = EncodersConfig.model_validate({"image": {"enabled": False}, "text": {"batch_size": 8}})
    encoders = load_encoders(cfg)
    assert set(encoders) == {"text"}
    assert encoders["text"] is text_encoder  # one model per process for the same settings


def test_build_save_load_subset(text_encoder, image_encoder, small_catalog, tmp_path):
    catalog = small_catalog.head(12).with_columns(
        pl.when(pl.col("item_id") == 3).then(None).otherwise(pl.col("image")).alias("image")
    )
    encoders = {"text": text_encoder, "image": image_encoder}
    feats = build_item_features(
        catalog, EncodersConfig(), encoders=encoders, store=FeatureStore(tmp_path / "cache"), show_progress=False
    )
    assert feats.text.shape == (12, 384) and feats.image.shape == (12, 1280)
    assert feats.image_mask.tolist() == [i != 3 for i in catalog["item_id"].to_list()]
    assert feats.fingerprints == {"text": text_encoder.fingerprint, "image": image_encoder.fingerprint}
    toy = feats.subset([1])
    assert toy.category_vocab == sorted(toy.category_vocab)
    assert {c for c, v in zip(toy.category_vocab, toy.categories[0]) if v} == {"Animation", "Children's", "Comedy"}

    path = tmp_path / "features.npz"
    feats.save(path)
    loaded = ItemFeatures.load(path)
    assert loaded.item_ids.dtype == np.int64
    for name in ["item_ids", "text", "text_mask", "image", "image_mask", "categories"]:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(feats, name))
    assert loaded.category_vocab == feats.category_vocab and loaded.fingerprints == feats.fingerprints

    sub = loaded.subset(np.array([5, 2], dtype=np.int32))
    assert sub.item_ids.tolist() == [5, 2]
    np.testing.assert_array_equal(sub.text, feats.text[[4, 1]])
    with pytest.raises(KeyError, match="999"):
        loaded.subset([999])


def test_serving_new_item_with_training_vocab(text_encoder):
    catalog = pl.DataFrame(
        {"item_id": ["new-1"], "title": ["Brand New Film (2024)"], "text": [None], "image": [None],
         "categories": [["Comedy", "Mockumentary"]]},
        schema_overrides={"text": pl.String, "image": pl.String},
    )
    cfg = EncodersConfig.model_validate({"image": {"enabled": False}})
    feats = build_item_features(catalog, cfg, encoders={"text": text_encoder}, category_vocab=["Action", "Comedy"],
                                show_progress=False)
    assert feats.categories.tolist() == [[0.0, 1.0]]  # unknown "Mockumentary" ignored
    assert feats.image is None and feats.text_mask.tolist() == [True]


def test_str_ids_and_missing_modalities_round_trip(tmp_path):
    feats = ItemFeatures(
        item_ids=np.array(["a", "bb"]), text=None, text_mask=None,
        image=np.ones((2, 3), np.float32), image_mask=np.array([True, False]),
        categories=np.zeros((2, 0), np.float32), category_vocab=[], fingerprints={"image": "x"},
    )
    feats.save(tmp_path / "f.npz")
    loaded = ItemFeatures.load(tmp_path / "f.npz")
    assert loaded.item_ids.tolist() == ["a", "bb"] and loaded.text is None and loaded.text_mask is None
    assert loaded.subset(["bb"]).image_mask.tolist() == [False]
    assert list(tmp_path.iterdir()) == [tmp_path / "f.npz"]  # no temp files left behind
