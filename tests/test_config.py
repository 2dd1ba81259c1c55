"""Config loading: retired levers and renamed fields, for configs and for bundles saved before them."""

from __future__ import annotations

import pytest
import torch
import yaml

from recsys.config import RETIRED, ConfigError, load_config


def _write(tmp_path, tree: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_a_retired_field_at_the_behaviour_that_remains_still_loads(tmp_path):
    path = _write(tmp_path, {"model": {"fusion": "gate", "user_hidden": 0}, "train": {"logq_correction": True}})
    cfg = load_config(path)
    assert "fusion" not in cfg.model.model_dump() and "logq_correction" not in cfg.train.model_dump()


@pytest.mark.parametrize("dotted, value", [("model.fusion", "sum"), ("train.history_dropout", 0.25), ("model.user_id_embedding", True)])
def test_a_retired_field_asking_for_another_behaviour_is_refused_by_name(tmp_path, dotted, value):
    section, name = dotted.split(".")
    with pytest.raises(ConfigError, match=rf"config.yaml: {dotted} was retired .* only {RETIRED[dotted][0]!r} remains"):
        load_config(_write(tmp_path, {section: {name: value}}))
    with pytest.raises(ConfigError, match=dotted):
        load_config(None, {dotted: value})  # a --set override too


def test_a_bundle_trained_with_a_retired_training_lever_still_loads(tmp_path):
    """A saved bundle's config records how it was trained; a training-only lever does not change the
    model it serves, one that shapes the model (user_hidden) does, and is refused."""
    saved = {"train": {"history_dropout": 0.25, "lr_decay_factor": 0.3}}
    assert load_config(_write(tmp_path, saved), saved=True).train.epochs > 0
    with pytest.raises(ConfigError, match="model.user_hidden"):
        load_config(_write(tmp_path, {"model": {"user_hidden": 16}}), saved=True)


def test_renamed_and_replaced_fields_are_read_from_old_configs(tmp_path):
    old = {"model": {"use_image": False}, "train": {"teacher_max_items": 5000, "num_uniform_negatives": -1}}
    cfg = load_config(_write(tmp_path, old))
    assert cfg.model.modalities == ["text", "categories"]
    assert cfg.train.ease_max_items == 5000
    assert cfg.train.num_uniform_negatives >= 2**31 - 1  # the old "whole catalog" sentinel
    with pytest.raises(ConfigError, match="replaced by model.modalities"):
        load_config(_write(tmp_path, {"model": {"use_image": True, "modalities": ["text"]}}))


def test_an_unknown_modality_is_named():
    from recsys.model.modalities import used_modalities

    cfg = load_config(None, {"model.modalities": ["text", "smell"]})
    with pytest.raises(ValueError, match=r"unknown \['smell'\]"):
        used_modalities(cfg.model, {"text": 4})


def test_old_bundles_head_names_load_into_the_registry_heads():
    """Weights saved before the modality registry name the heads text_head, image_head, category_head."""
    from recsys.config import ModelConfig
    from recsys.model.two_tower import TwoTowerModel

    widths = {"text": 6, "image": None, "categories": 3}
    model = TwoTowerModel(ModelConfig(dim=4, max_history=5), widths)
    state = model.state_dict()
    old = {key.replace("heads.text.", "text_head.").replace("heads.categories.", "category_head."): value.clone() + 1.0
           for key, value in state.items()}
    assert any(key.startswith("item_tower.text_head.") for key in old)
    model.load_state_dict(old)
    assert torch.equal(model.item_tower.heads["text"][1].weight, old["item_tower.text_head.1.weight"])


def test_a_grid_walks_its_product_with_the_first_name_slowest_and_keeps_the_first_best():
    from recsys.model.grid import Grid, Trial, best, search

    grid = Grid({"a": (1, 2), "b": (10, 20, 30)})
    assert len(grid) == 6 and list(grid.points())[:3] == [{"a": 1, "b": 10}, {"a": 1, "b": 20}, {"a": 1, "b": 30}]
    assert grid.first() == {"a": 1, "b": 10} and len(grid.pin(b=20)) == 2
    trials = search(grid, lambda p: -abs(p["a"] * p["b"] - 40))
    assert best(trials) == Trial({"a": 2, "b": 20}, 0.0)
    assert best([Trial({"x": 1}, 1.0), Trial({"x": 2}, 1.0)]).point == {"x": 1}
    with pytest.raises(ValueError, match="b has no values"):
        Grid({"a": (1,), "b": ()})
