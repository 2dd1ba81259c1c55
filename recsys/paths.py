"""Where things live (the shared MovieLens data, recsys's own state in RECSYS_HOME) and how a folder's
entries are made durable."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    override = os.environ.get("RECSYS_SHARED_DATA")
    return Path(override) if override else repo_root().parent / "shared" / "data"


def recsys_home() -> Path:
    """Where recsys keeps its state when no path is given (the MLflow store, artifacts, live catalog
    logs): `$RECSYS_HOME`, else the repository root, whatever the working directory."""
    override = os.environ.get("RECSYS_HOME")
    return Path(override).expanduser().resolve() if override else repo_root()


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` survive a power cut (the folder's own fsync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
