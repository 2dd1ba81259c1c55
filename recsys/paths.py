"""Where the shared MovieLens data lives: `$RECSYS_SHARED_DATA`, else `../shared/data` beside the repo."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    override = os.environ.get("RECSYS_SHARED_DATA")
    return Path(override) if override else repo_root().parent / "shared" / "data"
