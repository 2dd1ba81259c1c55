"""The content-hash embedding cache re-encodes only what changed."""

import shutil

import numpy as np

from recsys.encoders import FeatureStore, FrozenEncoder, build_item_texts


class CountingEncoder(FrozenEncoder):
    """Wraps a real encoder and counts how many inputs reach it."""

    def __init__(self, inner: FrozenEncoder, fingerprint: str | None = None) -> None:
        self.inner = inner
        self.name, self.modality, self.dim = inner.name, inner.modality, inner.dim
        self.fingerprint = fingerprint or inner.fingerprint
        self.calls: list[int] = []

    def content_hash(self, value):
        return self.inner.content_hash(value)

    def encode(self, inputs, *, ids=None, batch_size=None, show_progress=False):
        self.calls.append(len(inputs))
        return self.inner.encode(inputs, ids=ids, batch_size=batch_size, show_progress=show_progress)


def test_text_cache_reencodes_only_changed_items(text_encoder, small_catalog, tmp_path):
    catalog = small_catalog.head(30)
    ids = catalog["item_id"].to_list()
    texts = build_item_texts(catalog, ["title", "categories", "text"])
    store = FeatureStore(tmp_path / "cache")
    counting = CountingEncoder(text_encoder)

    emb1, mask1, stats1 = store.encode_with_cache(counting, ids, texts)
    assert stats1 == {"cached": 0, "encoded": 30} and counting.calls == [30]

    emb2, mask2, stats2 = store.encode_with_cache(counting, ids, texts)
    assert stats2 == {"cached": 30, "encoded": 0} and counting.calls == [30]
    np.testing.assert_array_equal(emb1, emb2)

    changed = list(texts)
    changed[7] = "A completely different plot about submarines."
    emb3, _, stats3 = store.encode_with_cache(counting, ids, changed)
    assert stats3 == {"cached": 29, "encoded": 1} and counting.calls == [30, 1]
    np.testing.assert_array_equal(np.delete(emb3, 7, 0), np.delete(emb1, 7, 0))
    fresh, _ = text_encoder.encode([changed[7]])
    np.testing.assert_allclose(emb3[7], fresh[0], atol=1e-5)
    assert emb3[7] @ emb1[7] < 0.9

    # a new process sees the same cache on disk
    _, _, stats4 = FeatureStore(tmp_path / "cache").encode_with_cache(counting, ids, changed)
    assert stats4["encoded"] == 0


def test_changed_fingerprint_reencodes_everything(text_encoder, small_catalog, tmp_path):
    texts = build_item_texts(small_catalog.head(10), ["title"])
    ids = small_catalog.head(10)["item_id"].to_list()
    store = FeatureStore(tmp_path)
    store.encode_with_cache(CountingEncoder(text_encoder), ids, texts)
    other = CountingEncoder(text_encoder, fingerprint=text_encoder.fingerprint + ":other-weights")
    _, _, stats = store.encode_with_cache(other, ids, texts)
    assert stats == {"cached": 0, "encoded": 10} and other.calls == [10]


def test_missing_text_is_cached_as_masked(text_encoder, tmp_path):
    store = FeatureStore(tmp_path)
    emb, mask, _ = store.encode_with_cache(CountingEncoder(text_encoder), [1, 2], ["A film.", None])
    assert mask.tolist() == [True, False] and not emb[1].any()
    emb, mask, stats = store.encode_with_cache(CountingEncoder(text_encoder), [1, 2], ["A film.", None])
    assert stats["encoded"] == 0 and mask.tolist() == [True, False] and not emb[1].any()


def test_image_cache_keys_on_file_bytes(image_encoder, poster_paths, tmp_path):
    posters = []
    for k, src in enumerate(poster_paths[:3]):
        dst = tmp_path / f"{k}.jpg"
        shutil.copy(src, dst)
        posters.append(str(dst))
    ids = ["a", "b", "c"]
    store = FeatureStore(tmp_path / "cache")
    counting = CountingEncoder(image_encoder)
    emb1, _, stats1 = store.encode_with_cache(counting, ids, posters)
    assert stats1["encoded"] == 3
    shutil.copy(poster_paths[5], posters[1])  # same path, new bytes
    emb2, _, stats2 = store.encode_with_cache(counting, ids, posters)
    assert stats2 == {"cached": 2, "encoded": 1} and counting.calls == [3, 1]
    assert emb2[1] @ emb1[1] < 0.99
    np.testing.assert_array_equal(emb2[[0, 2]], emb1[[0, 2]])
