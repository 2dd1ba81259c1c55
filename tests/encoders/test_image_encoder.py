"""Behaviour of the frozen EfficientNet-Lite0 image encoder on real posters."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from recsys.config import ImageEncoderConfig
from recsys.encoders import ImageEncoder, preprocess_image


def test_frozen_and_eval(image_encoder):
    assert image_encoder.modality == "image"
    assert not image_encoder.model.training
    assert all(not p.requires_grad for p in image_encoder.model.parameters())


def test_dim_unit_norm_and_not_constant(image_encoder, poster_paths):
    emb, mask = image_encoder.encode(poster_paths[:6], batch_size=4)
    assert image_encoder.dim == 1280
    assert emb.shape == (6, 1280) and emb.dtype == np.float32 and mask.all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T
    off_diag = sims[~np.eye(6, dtype=bool)]
    assert off_diag.max() < 0.99, "different posters should not give (near) identical features"
    assert emb.std(axis=0).mean() > 1e-3


def test_deterministic_across_batch_sizes(image_encoder, poster_paths):
    a, _ = image_encoder.encode(poster_paths[:4], batch_size=4)
    b, _ = image_encoder.encode(poster_paths[:4], batch_size=4)
    c, _ = image_encoder.encode(poster_paths[:4], batch_size=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, c, atol=1e-4)


def test_missing_and_corrupt_files_are_masked_with_warning(image_encoder, poster_paths, tmp_path, caplog):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    missing = tmp_path / "missing.jpg"
    inputs = [poster_paths[0], str(missing), str(corrupt), None, poster_paths[1]]
    with caplog.at_level(logging.WARNING, logger="recsys.encoders.image"):
        emb, mask = image_encoder.encode(inputs, ids=[101, 202, 303, 404, 505], batch_size=2)
    assert mask.tolist() == [True, False, False, False, True]
    assert not emb[1:4].any()
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("202" in m and str(missing) in m for m in messages)
    assert any("303" in m and str(corrupt) in m for m in messages)
    assert not any("404" in m for m in messages)  # no path given: plain missing input, no warning


def test_outputs_unchanged_after_training_a_downstream_layer(image_encoder, poster_paths):
    before, _ = image_encoder.encode(poster_paths[:2])
    head = torch.nn.Linear(image_encoder.dim, 3)
    opt = torch.optim.Adam(list(head.parameters()) + list(image_encoder.model.parameters()), lr=0.1)
    head(torch.from_numpy(before)).sum().backward()
    opt.step()
    assert all(p.grad is None for p in image_encoder.model.parameters())
    after, _ = image_encoder.encode(poster_paths[:2])
    np.testing.assert_array_equal(before, after)


def test_preprocess_resizes_crops_and_normalises():
    white = Image.new("RGB", (300, 150), (255, 255, 255))
    x = preprocess_image(white, 224, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    np.testing.assert_allclose(x, 1.0, atol=1e-6)
    grey = Image.new("L", (100, 400), 0)  # non-RGB input is converted
    assert preprocess_image(grey, 64, [0.5] * 3, [0.25] * 3).min() == pytest.approx(-2.0)


def test_the_normalising_table_gives_the_bits_of_plain_float_arithmetic(poster_paths):
    """preprocess_image normalises by looking each 8-bit level up in a table; every value must be the one
    the plain float32 formula gives ((pixels / 255 - mean) / std on the cropped image), so cached
    embeddings do not depend on which path made them. Real posters, odd sizes and non-RGB modes."""
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    rng = np.random.default_rng(0)
    images = [Image.open(path) for path in poster_paths[:4]]
    images += [Image.fromarray(rng.integers(0, 256, (97, 301, 3), dtype=np.uint8)),
               Image.fromarray(rng.integers(0, 256, (240, 60), dtype=np.uint8), mode="L"),
               Image.fromarray(rng.integers(0, 256, (130, 130, 4), dtype=np.uint8), mode="RGBA")]
    for image in images:
        rgb = image.convert("RGB")
        short = round(224 * 256 / 224)
        scale = short / min(rgb.size)
        size = (max(short, round(rgb.size[0] * scale)), max(short, round(rgb.size[1] * scale)))
        left, top = (size[0] - 224) // 2, (size[1] - 224) // 2
        crop = rgb.resize(size, Image.Resampling.BICUBIC).crop((left, top, left + 224, top + 224))
        plain = (np.asarray(crop, dtype=np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        np.testing.assert_array_equal(preprocess_image(image, 224, mean, std), plain.transpose(2, 0, 1))


def test_weights_must_load_strictly(tmp_path):
    from recsys.encoders.image import default_image_weights_path

    state = torch.load(default_image_weights_path(), map_location="cpu", weights_only=True)
    state.pop("_conv_head.weight")
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(RuntimeError, match="_conv_head.weight"):
        ImageEncoder(ImageEncoderConfig(weights=str(bad)))


def test_channels_last_matches_contiguous(image_encoder, poster_paths):
    off = ImageEncoder(ImageEncoderConfig(channels_last=False))
    assert off.fingerprint == image_encoder.fingerprint  # layout does not change outputs
    a, _ = image_encoder.encode(poster_paths[:2])
    b, _ = off.encode(poster_paths[:2])
    np.testing.assert_allclose(a, b, atol=1e-4)
