"""Behaviour of the frozen text encoder on real ml-100k item texts."""

import numpy as np
import polars as pl
import pytest
import torch

from recsys.encoders import build_item_texts


def test_frozen_and_eval(text_encoder):
    assert text_encoder.modality == "text"
    assert not text_encoder.model.training
    assert all(not p.requires_grad for p in text_encoder.model.parameters())


def test_dim_dtype_and_unit_norm(text_encoder, small_catalog):
    texts = build_item_texts(small_catalog.head(8), ["title", "categories", "text"])
    emb, mask = text_encoder.encode(texts)
    assert text_encoder.dim == 384
    assert emb.shape == (8, 384) and emb.dtype == np.float32 and mask.dtype == bool
    assert mask.all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_deterministic_and_order_restored(text_encoder, small_catalog):
    texts = build_item_texts(small_catalog.head(10), ["title", "text"])
    first, _ = text_encoder.encode(texts, batch_size=4)
    again, _ = text_encoder.encode(texts, batch_size=4)
    np.testing.assert_array_equal(first, again)
    # reversed input gives reversed rows: the length sort inside is undone
    rev, _ = text_encoder.encode(texts[::-1], batch_size=4)
    np.testing.assert_allclose(rev[::-1], first, atol=1e-4)


def test_missing_text_gives_mask_false_and_zero_row(text_encoder):
    emb, mask = text_encoder.encode(["A space adventure.", None, "", "   ", "A love story."], ids=[1, 2, 3, 4, 5])
    assert mask.tolist() == [True, False, False, False, True]
    assert not emb[1:4].any()
    assert np.linalg.norm(emb[0]) == pytest.approx(1.0, abs=1e-5)


def test_all_missing_does_not_crash(text_encoder):
    emb, mask = text_encoder.encode([None, None])
    assert emb.shape == (2, 384) and not mask.any() and not emb.any()


def test_semantics_survive(text_encoder):
    """Transferred weights are really loaded: paraphrases are closer than unrelated text."""
    emb, _ = text_encoder.encode(
        ["A cowboy doll is jealous of a new spaceman toy.", "Toys come to life; a cowboy toy envies a space toy.",
         "A tax accountant audits a bank in winter."]
    )
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


def test_outputs_unchanged_after_training_a_downstream_layer(text_encoder, small_catalog):
    texts = build_item_texts(small_catalog.head(6), ["title", "text"])
    before, _ = text_encoder.encode(texts)
    params_before = [p.detach().clone() for p in text_encoder.model.parameters()]
    head = torch.nn.Linear(text_encoder.dim, 4)
    opt = torch.optim.SGD(list(head.parameters()) + list(text_encoder.model.parameters()), lr=1.0)
    x = torch.from_numpy(before)
    loss = head(x).pow(2).sum()
    loss.backward()
    opt.step()
    assert head.weight.grad is not None
    assert all(p.grad is None for p in text_encoder.model.parameters())
    after, _ = text_encoder.encode(texts)
    np.testing.assert_array_equal(before, after)
    for p, q in zip(params_before, text_encoder.model.parameters()):
        assert torch.equal(p, q)


def test_build_item_texts_format():
    catalog = pl.DataFrame(
        {
            "item_id": [1, 2, 3],
            "title": ["Toy Story (1995)", None, ""],
            "categories": [["Animation", "Children's", "Comedy"], [], None],
            "text": ["A cowboy doll is jealous.", "Only a plot.", None],
            "director": [["John Lasseter"], None, None],
        }
    )
    texts = build_item_texts(catalog, ["title", "categories", "text", "director"])
    assert texts[0] == "Toy Story (1995). Genres: Animation, Children's, Comedy. A cowboy doll is jealous. Director: John Lasseter"
    assert texts[1] == "Only a plot."
    assert texts[2] is None
    with pytest.raises(KeyError):
        build_item_texts(catalog, ["title", "nope"])


def test_text_columns_are_picked_from_the_catalog_and_named():
    from recsys.encoders.text import select_text_columns

    catalog = pl.DataFrame({
        "item_id": ["SKU-1", "SKU-2"], "title": ["Red shirt", "Pan"], "categories": [["Shirts"], ["Kitchen"]],
        "description": ["Soft cotton.", None], "brand": ["Contoso", "Fabrikam"], "sku_id": ["x", "y"],
        "image_url": ["https://cdn/1.jpg", None], "thumb": ["img/1.png", "img/2.png"], "alt_title": ["Shirt, red", "A pan"],
        "updated_by": ["bot", "ann"], "source": ["feed", "feed"], "price": [9.5, 20.0],
    })
    columns = select_text_columns(catalog, None)
    assert columns.used == ["title", "categories", "description", "brand"]
    assert columns.ignored == {"sku_id": "an id", "image_url": "a path or link", "thumb": "paths or links",
                               "alt_title": "another title", "updated_by": "record metadata", "source": "one value"}
    assert "description" in columns.describe() and "image_url (a path or link)" in columns.describe()
    assert select_text_columns(catalog, ["title", "brand"]).used == ["title", "brand"]
    with pytest.raises(KeyError, match="encoders.text.fields names columns the catalog does not have: \\['plot'\\]"):
        select_text_columns(catalog, ["title", "plot"])
