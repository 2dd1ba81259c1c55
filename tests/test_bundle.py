"""Bundle round trip, and loud refusal of bundles that disagree with themselves or the encoders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from recsys.bundle import SCHEMA_VERSION, BundleError, load_bundle
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
