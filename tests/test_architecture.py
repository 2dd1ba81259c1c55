"""The worked examples of docs/architecture.md, executed as written: adding a modality (an entry in the
registry with its own frozen encoder) and adding a scorer (a model wrapped with a fit that owns it)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from recsys.data.splits import loo_split
from recsys.paths import repo_root


def _example(n: int) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (repo_root() / "docs" / "architecture.md").read_text(), re.S)
    assert len(blocks) == 2, "docs/architecture.md should hold the modality and the scorer example"
    return blocks[n]


@pytest.fixture
def title_shape():
    """The modality example, registered for one test and removed after it."""
    from recsys.model.modalities import unregister

    namespace: dict = {}
    exec(compile(_example(0), "docs/architecture.md (adding a modality)", "exec"), namespace)
    yield namespace
    unregister("title_shape")


def test_adding_a_modality_is_one_registry_entry(title_shape, tiny_data, tiny_features, tmp_path, make_config):
    from pipelines.train import build_bundle
    from recsys.bundle import load_bundle
    from recsys.encoders.features import build_item_features, load_encoders
    from recsys.model.train import fit_two_tower
    from recsys.recommender import Recommender

    catalog, interactions = tiny_data
    cfg = make_config(tmp_path, **{"model.modalities": ["text", "categories", "title_shape"], "train.epochs": 1})
    # The encoders layer now builds it beside the text encoder, and the feature step fills extra[...].
    encoders = load_encoders(cfg.encoders)
    assert set(encoders) == {"text", "title_shape"}
    built = build_item_features(catalog, cfg.encoders, encoders={"title_shape": encoders["title_shape"]}, show_progress=False)
    shape = built.extra["title_shape"]
    assert shape.shape == (catalog.height, 4) and (shape > 0).all()
    features = dataclasses.replace(
        tiny_features, extra={"title_shape": shape[built.positions(tiny_features.item_ids)]},
        fingerprints={**tiny_features.fingerprints, **built.fingerprints},
    )
    split = loo_split(interactions, seed=0)
    result = fit_two_tower(features, split.train, split.valid, cfg, show_progress=False)
    model = result.model
    assert list(model.item_tower.heads) == ["text", "categories", "title_shape"]
    # The item vectors read it: one item's new feature row moves that item's vector alone.
    changed = shape[built.positions(tiny_features.item_ids)].copy()
    changed[0] += 1.0
    before = model.encode_items(model.feature_tensors(features))
    after = model.encode_items(model.feature_tensors(dataclasses.replace(features, extra={"title_shape": changed})))
    assert not np.allclose(before[0], after[0], atol=1e-4) and np.allclose(before[1:], after[1:], atol=1e-6)
    # A bundle records its width and rebuilds the model; an item added live is embedded with it too.
    bundle = load_bundle(build_bundle(cfg, tmp_path / "bundle", catalog, interactions, features, result))
    assert bundle.meta["model_shape"]["widths"]["title_shape"] == 4
    np.testing.assert_allclose(bundle.model.encode_items(bundle.model.feature_tensors(bundle.features)), bundle.item_vectors, atol=1e-5)
    recommender = Recommender(bundle)
    recommender.add_item(990_001, "A Title (2024)", log=False)
    recommender.add_item(990_002, "ANOTHER, LONGER TITLE 1 2 3 (2025)", log=False)
    added = recommender._vectors[[recommender._row_of[990_001], recommender._row_of[990_002]]]
    assert not np.allclose(added[0], added[1], atol=1e-4)  # no text, no genres: only the new modality tells them apart


def test_adding_a_scorer_is_a_model_and_the_fit_that_owns_it(tiny_data, tiny_features, tmp_path, make_config):
    from recsys.model.fitting import model_fit, validation_score
    from recsys.model.train import prepare_training_data
    from recsys.model.two_tower import ModelScorer

    namespace: dict = {}
    exec(compile(_example(1), "docs/architecture.md (adding a scorer)", "exec"), namespace)
    _, interactions = tiny_data
    split = loo_split(interactions, seed=0)
    cfg = make_config(tmp_path, **{"train.epochs": 2})
    data = prepare_training_data(tiny_features, split.train, split.valid, cfg)
    result = namespace["ContentBlendFit"](model_fit(cfg), cfg).fit(tiny_features, data)
    model = result.model
    assert isinstance(model, namespace["ContentBlend"]) and float(model.weight) in (0.0, 0.25, 0.5, 1.0)
    # What it reports is its own validation score, ranked as everything is; never below what it wraps.
    assert result.best_metric == pytest.approx(validation_score(model, tiny_features, data.valid, "ndcg@10"), abs=1e-9)
    towers = validation_score(model.base, tiny_features, data.valid, "ndcg@10")
    assert result.best_metric >= towers
    # Its scores are the wrapped model's plus weight x text similarity to the history's mean text.
    model.weight.fill_(0.5)
    histories = data.valid.queries.histories[:5]
    blended = ModelScorer(model, model.feature_tensors(tiny_features)).score(histories)
    base = ModelScorer(model.base, model.feature_tensors(tiny_features)).score(histories)
    text = tiny_features.text * tiny_features.text_mask[:, None]
    expected = base + 0.5 * np.stack([text[h].mean(axis=0) for h in histories]) @ text.T
    np.testing.assert_allclose(blended, expected, atol=1e-4)
