"""The FrozenEncoder contract shared by the text and image encoders.

Encoders are transferred, never trained: every step downstream (cache, item tower, bundle checks)
relies on an encoder being a pure function of its input identified by `fingerprint`.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

FINGERPRINT_HASH_CHARS = 12


class FrozenEncoder(ABC):
    """A pretrained model used as a fixed feature extractor.

    `encode` returns (float32 [n, dim] L2-normalised embeddings, bool [n] mask); a missing input gives
    mask False and a zero row, never an exception, so one bad item cannot stop a catalog run.
    """

    name: str
    modality: str  # "text" | "image"
    dim: int
    fingerprint: str  # model id + weights hash + output-changing preprocessing settings

    @abstractmethod
    def encode(
        self,
        inputs: Sequence[str | None],
        *,
        ids: Sequence | None = None,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embed `inputs` (texts or image paths); `ids` only name items in warnings."""

    def content_hash(self, value: str | None) -> str:
        """sha256 of what the encoder actually sees; the cache re-encodes an item when this changes."""
        if value is None:
            return sha256_text("\0missing")
        return sha256_text(value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fingerprint={self.fingerprint!r})"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_files(paths: Iterable[Path], n_chars: int = FINGERPRINT_HASH_CHARS) -> str:
    """Short digest over file names and bytes (sorted), so a swapped weights file changes the fingerprint."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:n_chars]


def sha256_state_dict(module: nn.Module, n_chars: int = FINGERPRINT_HASH_CHARS) -> str:
    """Digest of in-memory weights, for models whose files we cannot locate."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:n_chars]


def freeze(module: nn.Module) -> nn.Module:
    """Put `module` in eval mode with no trainable parameter, and check it stuck."""
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    assert not module.training, "frozen encoder must be in eval mode"
    assert not any(p.requires_grad for p in module.parameters()), "frozen encoder has a trainable parameter"
    return module


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32, copy=False)


def item_label(ids: Sequence | None, index: int) -> str:
    """How a warning names an item: its id when given, else its position."""
    return str(ids[index]) if ids is not None else f"#{index}"
