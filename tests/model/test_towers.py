"""Tower contracts: only the towers train, outputs are unit vectors, items need content only,
the user tower is causal and accepts anonymous histories."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.config import ModelConfig
from recsys.model.two_tower import FeatureTensors, TwoTowerModel


WIDTHS = {"text": 16, "image": 8, "categories": 3}


def _features(n: int, text_dim: int = 16, image_dim: int = 8, n_cat: int = 3, seed: int = 0) -> FeatureTensors:
    g = torch.Generator().manual_seed(seed)
    values = {
        "text": torch.randn(n, text_dim, generator=g),
        "image": torch.randn(n, image_dim, generator=g),
        "categories": (torch.rand(n, n_cat, generator=g) > 0.5).float(),
    }
    present = {"text": torch.ones(n, dtype=torch.bool), "image": torch.ones(n, dtype=torch.bool)}
    present["categories"] = values["categories"].sum(dim=1) > 0
    return FeatureTensors(values, present, n)


def _model(**overrides) -> TwoTowerModel:
    cfg = ModelConfig(dim=8, head_hidden=16, max_history=6, n_heads=2, **overrides)
    return TwoTowerModel(cfg, WIDTHS)


def test_trainable_parameters_are_exactly_the_towers():
    model = _model()
    names = {".".join(name.split(".")[:3]) if ".heads." in name else ".".join(name.split(".")[:2])
             for name, p in model.named_parameters() if p.requires_grad}
    assert names == {
        "item_tower.heads.text",
        "item_tower.heads.image",
        "item_tower.heads.categories",
        "item_tower.gate",
        "item_tower.missing",
        "item_tower.bias",
        "user_tower.position",
        "user_tower.input_norm",
        "user_tower.encoder",
        "user_tower.output",
    }
    # Frozen encoder features are inputs, not parameters or persistent buffers of the model.
    assert all(not name.startswith(("text_encoder", "image_encoder")) for name in model.state_dict())


def test_item_vectors_are_unit_and_need_no_interactions():
    model = _model()
    vectors = model.encode_items(_features(10))
    assert vectors.shape == (10, 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_missing_modalities_are_masked_not_fatal():
    model = _model()
    features = _features(4)
    features.present["text"][:] = False
    features.present["image"][1] = False
    features.present["categories"][2] = False
    features.present["image"][2] = False  # item 2 has no content at all
    vectors = model.encode_items(features)
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # A masked modality's values must not matter.
    changed = _features(4)
    changed.values = dict(features.values, text=features.values["text"] + 100.0)
    changed.present = {name: mask.clone() for name, mask in features.present.items()}
    np.testing.assert_allclose(model.encode_items(changed), vectors, atol=1e-6)


def test_user_tower_is_causal_and_handles_padding():
    torch.manual_seed(0)
    model = _model()
    model.eval()
    items = torch.nn.functional.normalize(torch.randn(1, 6, 8), dim=-1)
    valid = torch.tensor([[False, False, True, True, True, True]])
    with torch.no_grad():
        before = model.user_tower(items, valid)
        changed = items.clone()
        changed[0, 5] = -changed[0, 5]  # change the newest item only
        after = model.user_tower(changed, valid)
        # What padding holds must not matter either.
        padded = items.clone()
        padded[0, :2] = 5.0
        with_junk = model.user_tower(padded, valid)
    torch.testing.assert_close(before[0, 2:5], after[0, 2:5])
    assert not torch.allclose(before[0, 5], after[0, 5])
    torch.testing.assert_close(before[0, 2:], with_junk[0, 2:])


def test_mean_pooling_and_anonymous_histories():
    model = _model(user_pooling="mean")
    item_vectors = model.encode_items(_features(10))
    users = model.encode_histories(item_vectors, [np.array([1, 2, 3]), np.array([], dtype=np.int64), np.arange(10)])
    assert users.shape == (3, 8)
    assert np.isfinite(users).all()
    np.testing.assert_allclose(np.linalg.norm(users, axis=1), 1.0, atol=1e-5)


def test_long_histories_read_only_the_last_max_history_items():
    model = _model()
    item_vectors = model.encode_items(_features(20))
    long = np.arange(20)
    a = model.encode_histories(item_vectors, [long])
    b = model.encode_histories(item_vectors, [long[-6:]])
    np.testing.assert_allclose(a, b, atol=1e-6)


def _hybrid(dropout: float = 0.5) -> TwoTowerModel:
    # Head dropout off, so that in training mode only the identity dropout differs between two calls.
    cfg = ModelConfig(
        dim=8, head_hidden=0, head_dropout=0.0, max_history=6, item_id_embedding=True, item_id_dropout=dropout
    )
    return TwoTowerModel(cfg, WIDTHS, item_id_vocab=["a", "b", "c"])


def test_identity_residual_moves_only_known_items():
    model = _hybrid()
    with torch.no_grad():
        model.item_tower.id_embedding.weight[1:] = torch.randn(3, 8)
    features = _features(4)
    content_only = model.encode_items(features)  # no identity rows given: content path alone
    features.id_index = torch.tensor([1, 2, 3, 0])  # three known items and one new one
    hybrid = model.encode_items(features)
    assert not np.allclose(hybrid[:3], content_only[:3], atol=1e-3)
    np.testing.assert_allclose(hybrid[3], content_only[3], atol=1e-6)  # a new item is served by content
    np.testing.assert_allclose(np.linalg.norm(hybrid, axis=1), 1.0, atol=1e-5)
    # The unknown row is the padding row: it never learns.
    assert torch.count_nonzero(model.item_tower.id_embedding.weight[0]) == 0


def test_identity_residual_is_dropped_only_while_training():
    model = _hybrid(dropout=0.5)
    with torch.no_grad():
        model.item_tower.id_embedding.weight[1:] = torch.randn(3, 8)
    features = _features(600)
    features.id_index = torch.ones(600, dtype=torch.long)
    content = model.item_tower.train().encode(features.values, features.present)[0]
    torch.manual_seed(0)
    trained = model.item_tower.train().encode(features.values, features.present, features.id_index)[0]
    dropped = torch.isclose(trained, content, atol=1e-6).all(dim=1).float().mean().item()
    assert 0.4 < dropped < 0.6
    model.eval()
    with torch.no_grad():
        evaluated = model.item_tower.encode(features.values, features.present, features.id_index)[0]
    assert not torch.isclose(evaluated, content, atol=1e-6).all(dim=1).any()


def test_feature_tensors_map_ids_seen_in_training_and_nothing_else(tiny_features):
    seen = list(tiny_features.item_ids[:5])
    cfg = ModelConfig(dim=8, head_hidden=0, max_history=6, item_id_embedding=True)
    widths = {"text": 384, "categories": len(tiny_features.category_vocab)}
    model = TwoTowerModel(cfg, widths, item_id_vocab=seen)
    rows = model.feature_tensors(tiny_features).id_index.tolist()
    assert rows[:5] == [1, 2, 3, 4, 5]
    assert set(rows[5:]) == {0}
    # Off by default: a content-only model has no identity table and no identity rows.
    plain = TwoTowerModel(ModelConfig(dim=8), widths, item_id_vocab=seen)
    assert plain.item_tower.id_embedding is None and plain.feature_tensors(tiny_features).id_index is None


def test_leave_one_out_state_is_the_tower_over_every_other_item():
    model = _model(user_pooling="mean")
    model.eval()
    history = torch.randn(2, 6, 8)
    valid = torch.tensor([[False, False, True, True, True, True], [True] * 6])
    with torch.no_grad():
        states = model.user_tower.leave_one_out(history, valid)
        for row in range(2):
            for j in torch.nonzero(valid[row]).flatten().tolist():
                others = valid[row].clone()
                others[j] = False
                expected = model.user_tower.output(history[row][others].mean(dim=0))
                torch.testing.assert_close(states[row, j], torch.nn.functional.normalize(expected, dim=-1))
    # Nothing else reads the history as a set: an ordered tower refuses.
    try:
        _model(user_pooling="attention").user_tower.leave_one_out(history, valid)
    except ValueError as err:
        assert "user_pooling=mean" in str(err)
    else:
        raise AssertionError("attention tower accepted a set objective")


def test_learned_vector_lengths_start_at_one_and_train():
    """item_scale / user_scale: the model starts as the unit-vector one, and the lengths get gradients
    (an item's length is predicted from its content, so a new item has one too)."""
    model = _model(user_pooling="mean", item_scale=True, user_scale=True)
    model.eval()  # no dropout: the same vectors twice
    features = _features(10)
    vectors, _ = model.item_vectors_and_bias(features)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(10))
    users = model.user_tower(vectors[None, :6], torch.ones(1, 6, dtype=torch.bool))
    torch.testing.assert_close(users.norm(dim=-1), torch.ones(1, 6))
    (users[0, -1] @ vectors.T).logsumexp(dim=0).backward()
    for scale in (model.item_tower.scale, model.user_tower.scale):
        assert scale.weight.grad.abs().sum() > 0
    # Moved lengths: vectors keep their directions, each item its own length.
    with torch.no_grad():
        model.item_tower.scale.weight.normal_()
        scaled = model.encode_items(features)
    lengths = np.linalg.norm(scaled, axis=1)
    assert lengths.std() > 0.01 and (lengths > 0).all()
    np.testing.assert_allclose(scaled / lengths[:, None], vectors.detach().numpy(), atol=1e-5)


def test_leave_one_out_with_hidden_items_reads_only_the_visible_others():
    """An item left out of `valid` (padding, or an item the step hides) is read by no state, and its own
    state is the tower over every visible one."""
    model = _model(user_pooling="mean")
    model.eval()
    history = torch.randn(1, 6, 8)
    visible = torch.tensor([[True, False, True, True, False, True]])
    with torch.no_grad():
        states = model.user_tower.leave_one_out(history, visible)
        changed = history.clone()
        changed[0, [1, 4]] = 50.0  # hidden items' vectors must not matter
        torch.testing.assert_close(model.user_tower.leave_one_out(changed, visible), states)
        over_visible = model.user_tower.output(history[0, visible[0]].mean(dim=0))
        torch.testing.assert_close(states[0, 1], torch.nn.functional.normalize(over_visible, dim=-1))
        over_others = model.user_tower.output(history[0, [2, 3, 5]].mean(dim=0))
        torch.testing.assert_close(states[0, 0], torch.nn.functional.normalize(over_others, dim=-1))


def test_ensemble_score_is_the_mean_of_its_members_scores():
    from recsys.model.two_tower import TwoTowerEnsemble, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(dim=8, head_hidden=16, max_history=6, item_scale=True, user_scale=True, ensemble_size=3)
    ensemble = build_model(cfg, WIDTHS)
    assert isinstance(ensemble, TwoTowerEnsemble) and ensemble.dim == 24
    with torch.no_grad():  # non-zero biases, so that their mean is checked too
        for member in ensemble.members:
            for p in member.item_tower.bias.parameters():
                p.normal_()
    features = _features(10)
    vectors, bias = ensemble.encode_items_with_bias(features)
    histories = [np.array([1, 2, 3]), np.array([], dtype=np.int64), np.arange(10)]
    users = ensemble.encode_histories(vectors, histories)
    assert vectors.shape == (10, 24) and users.shape == (3, 24)
    expected = np.zeros((3, 10))
    for member in ensemble.members:
        member_vectors, member_bias = member.encode_items_with_bias(features)
        expected += member.encode_histories(member_vectors, histories) @ member_vectors.T + member_bias
    np.testing.assert_allclose(users @ vectors.T + bias, expected / 3, atol=1e-5)
    # Members with different shapes cannot be averaged this way.
    other = TwoTowerModel(ModelConfig(dim=4, max_history=6), WIDTHS)
    with pytest.raises(ValueError, match="member 1 differs"):
        TwoTowerEnsemble([ensemble.members[0], other])


def test_item_item_blend_adds_the_block_score_and_leaves_new_items_to_the_towers():
    from recsys.model.two_tower import ItemItemBlend, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(dim=8, head_hidden=16, max_history=6, item_item="ease", item_item_rank=4)
    model = build_model(cfg, WIDTHS, item_id_vocab=["a", "b", "c", "d"])
    assert isinstance(model, ItemItemBlend) and model.dim == 8 + 4 + 1
    rng = np.random.default_rng(0)
    q = rng.normal(size=(4, 4)).astype(np.float32)
    s = rng.uniform(0.5, 1.0, size=4).astype(np.float32)
    model.set_block(q, s, weight=2.0, decay=0.5)
    features = _features(6)
    features.id_index = torch.tensor([1, 2, 3, 4, 0, 0])  # rows 4 and 5 are new items
    vectors, bias = model.encode_items_with_bias(features)
    tower_vectors, tower_bias = model.base.encode_items_with_bias(features)
    histories = [np.array([0, 1, 4]), np.array([5])]
    users = model.encode_histories(vectors, histories)
    towers = model.base.encode_histories(tower_vectors, histories) @ tower_vectors.T + tower_bias
    block = np.zeros((2, 6), dtype=np.float32)
    # User 0: item 0 two steps back (0.25), item 1 one step back (0.5), the new item 4 adds nothing.
    block[0, :4] = 2.0 * (0.25 * s[0] * q[0] + 0.5 * s[1] * q[1]) @ q.T
    np.testing.assert_allclose(users @ vectors.T + bias, towers + block, atol=1e-5)
    # New items score exactly as the towers score them; content-only vectors carry no block.
    np.testing.assert_allclose((users @ vectors.T + bias)[:, 4:], towers[:, 4:], atol=1e-6)
    content, _ = model.item_vectors_and_bias(features, use_identity=False)
    assert not content[:, 8:].any()
    # Item-to-item: the towers' vector, then the block's view of what follows the item.
    query = model.similarity_queries(vectors[:1])
    np.testing.assert_allclose(query[0, :8], tower_vectors[0], atol=1e-6)
    np.testing.assert_allclose(query[0, 8:12], 2.0 * s[0] * q[0], rtol=1e-5)
    assert query[0, 12] == 0.0
    with pytest.raises(ValueError, match="block shapes"):
        model.set_block(q[:3], s[:3], 1.0, 1.0)


def test_item_item_content_map_gives_new_items_a_predicted_block_row_and_keeps_histories_unchanged():
    from recsys.model.two_tower import ItemItemBlend, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(dim=8, head_hidden=16, max_history=6, item_item="ease", item_item_rank=4,
                      item_item_new_items="content")
    model = build_model(cfg, WIDTHS, item_id_vocab=["a", "b", "c", "d"])
    assert isinstance(model, ItemItemBlend) and model.predicts_new_items
    rng = np.random.default_rng(1)
    q = rng.normal(size=(4, 4)).astype(np.float32)
    s = rng.uniform(0.5, 1.0, size=4).astype(np.float32)
    content_map = rng.normal(size=(16 + 3 + 1, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="content map is given exactly"):
        model.set_block(q, s, weight=2.0, decay=0.5)
    model.set_block(q, s, weight=2.0, decay=0.5, content_map=content_map)
    features = _features(6)
    features.present["text"] = torch.tensor([True, True, True, True, True, False])  # item 5 has no text
    features.id_index = torch.tensor([1, 2, 3, 4, 0, 0])  # rows 4 and 5 are new items
    vectors, bias = model.encode_items_with_bias(features)
    # Known items keep their EASE rows; new items get [text, categories, 1] @ map (text zeroed when absent), s = 0.
    np.testing.assert_allclose(vectors[:4, 8:12], q, atol=1e-6)
    design = np.concatenate([features.values["text"].numpy(), features.values["categories"].numpy(), np.ones((6, 1))], axis=1)
    design[5, :16] = 0.0
    np.testing.assert_allclose(vectors[4:, 8:12], design[4:] @ content_map, rtol=1e-4, atol=1e-4)
    assert not vectors[4:, 12].any()
    # A new item in a history adds nothing to the block; the block scores new items through the map.
    tower_vectors, tower_bias = model.base.encode_items_with_bias(features)
    histories = [np.array([0, 1, 4])]
    users = model.encode_histories(vectors, histories)
    user_block = 2.0 * (0.25 * s[0] * q[0] + 0.5 * s[1] * q[1])
    np.testing.assert_allclose(users[0, 8:12], user_block, rtol=1e-5)
    towers = model.base.encode_histories(tower_vectors, histories) @ tower_vectors.T + tower_bias
    np.testing.assert_allclose((users @ vectors.T + bias)[0, 4:], towers[0, 4:] + user_block @ vectors[4:, 8:12].T, rtol=1e-4, atol=1e-4)
    # Content-only vectors (what add_item gives a new item) carry the predicted row too.
    content, _ = model.item_vectors_and_bias(features, use_identity=False)
    np.testing.assert_allclose(content[:4, 8:12].detach().numpy(), design[:4] @ content_map, rtol=1e-4, atol=1e-4)


def test_keep_mask_drops_at_the_asked_rate_and_follows_the_seed():
    from recsys.model.towers import keep_mask

    torch.manual_seed(0)
    first = keep_mask((400, 500), 0.2)
    assert first.dtype == torch.bool and first.shape == (400, 500)
    assert abs(1.0 - first.float().mean().item() - 0.2) < 0.005
    # No pattern along any axis: every row and column keeps about 80%.
    assert first.float().mean(dim=0).std() < 0.05 and first.float().mean(dim=1).std() < 0.05
    torch.manual_seed(0)
    assert torch.equal(keep_mask((400, 500), 0.2), first)
    assert keep_mask((3, 7), 0.0).all() and not keep_mask((3, 7), 1.0).any()


def test_fast_dropout_keeps_the_mean_and_is_identity_in_eval():
    from recsys.model.towers import FastDropout

    x = torch.ones(200, 300)
    layer = FastDropout(0.3)
    out = layer(x)
    assert abs(out.mean().item() - 1.0) < 0.02
    values = torch.unique(out).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.7)
    layer.eval()
    assert torch.equal(layer(x), x)


@pytest.mark.parametrize("training", [True, False])
def test_encoder_layer_computes_what_torch_layer_computes(training):
    """Same parameters and state dict as nn.TransformerEncoderLayer, and the same output (dropout 0 when
    training, so both are deterministic), with the bool [B * heads, L, L] mask the user tower builds."""
    from torch import nn

    from recsys.model.towers import _EncoderLayer

    kwargs = dict(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
    torch.manual_seed(0)
    ours, reference = _EncoderLayer(**kwargs), nn.TransformerEncoderLayer(**kwargs)
    assert set(ours.state_dict()) == set(reference.state_dict())
    reference.load_state_dict(ours.state_dict())
    ours.train(training)
    reference.train(training)
    x = torch.randn(3, 5, 8)
    blocked = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1).expand(6, 5, 5).clone()
    torch.testing.assert_close(ours(x, src_mask=blocked), reference(x, src_mask=blocked), rtol=1e-5, atol=1e-5)


def test_a_kernel_content_map_predicts_new_rows_from_the_anchors_and_survives_a_reload():
    """A kernel map (sharpness > 0) predicts a new item's block row as [k(x, anchors), 1] @ map, in chunks of rows;
    its buffers take their saved shapes on load, and a state dict from before the kernel map loads as a linear map."""
    from recsys.model.item_item import predict_content_rows
    from recsys.model.two_tower import build_model

    cfg = ModelConfig(dim=8, head_hidden=16, max_history=6, item_item="ease", item_item_rank=4, item_item_new_items="content")
    vocab = ["a", "b", "c", "d"]
    model = build_model(cfg, WIDTHS, item_id_vocab=vocab)
    rng = np.random.default_rng(2)
    q = rng.normal(size=(4, 4)).astype(np.float32)
    s = rng.uniform(0.5, 1.0, size=4).astype(np.float32)
    features = _features(6)
    features.id_index = torch.tensor([1, 2, 3, 4, 0, 0])  # rows 4 and 5 are new items
    design = model.content_design(features, unit=True).numpy()
    assert model.content_parts == 2 and design.shape == (6, 16 + 3 + 1)
    kernel_map = rng.normal(size=(4 + 1, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="needs anchors"):
        model.set_block(q, s, 1.0, 1.0, content_map=kernel_map, content_unit=True, content_sharpness=2.0)
    with pytest.raises(ValueError, match="content map shape"):
        model.set_block(q, s, 1.0, 1.0, content_map=kernel_map[:3], content_unit=True, content_sharpness=2.0,
                        content_anchors=design[:4, :-1])
    model.set_block(q, s, 1.0, 1.0, content_map=kernel_map, content_unit=True, content_sharpness=2.0, content_anchors=design[:4, :-1])
    expected = predict_content_rows(design[4:], kernel_map, design[:4, :-1], 2.0, 2)
    vectors, _ = model.encode_items_with_bias(features)
    np.testing.assert_allclose(vectors[:4, 8:12], q, atol=1e-6)
    np.testing.assert_allclose(vectors[4:, 8:12], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.content_rows(torch.as_tensor(design[4:])).numpy(), expected, rtol=1e-4, atol=1e-4)
    # A fresh model (built with the empty linear-map buffers) loads the kernel map's saved shapes.
    reloaded = build_model(cfg, WIDTHS, item_id_vocab=vocab)
    reloaded.load_state_dict(model.state_dict())
    np.testing.assert_allclose(reloaded.encode_items_with_bias(features)[0], vectors, atol=1e-6)
    # A state dict saved before the kernel map (no sharpness, no anchors) is a linear map.
    linear_map = rng.normal(size=(16 + 3 + 1, 4)).astype(np.float32)
    old = {k: v for k, v in model.state_dict().items() if k not in ("block_content_sharpness", "block_content_anchors")}
    old["block_content_map"] = torch.as_tensor(linear_map)
    reloaded.load_state_dict(old)
    assert float(reloaded.block_content_sharpness) == 0.0 and len(reloaded.block_content_anchors) == 0
    np.testing.assert_allclose(reloaded.encode_items_with_bias(features)[0][4:, 8:12], design[4:] @ linear_map, rtol=1e-4, atol=1e-4)
