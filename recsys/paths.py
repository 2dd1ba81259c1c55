"""Where things live: the shared MovieLens data and recsys's own state (RECSYS_HOME)."""

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
