"""faiss item index: build/save/load, index choice by catalog size, exclusion and candidate filters."""

from recsys.index.faiss_index import (
    INT_SENTINEL,
    STR_SENTINEL,
    ItemIndex,
    ItemIndexError,
    default_nlist,
    resolve_kind,
)

__all__ = ["INT_SENTINEL", "STR_SENTINEL", "ItemIndex", "ItemIndexError", "default_nlist", "resolve_kind"]
