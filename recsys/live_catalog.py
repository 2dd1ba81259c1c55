"""The live catalog log: items added or removed while serving, kept on disk and replayed on every load.

Why: an item a shop adds through the API must survive `/admin/reload` and a restart, and a nightly
batch job must see it, long before a retrain folds it into the catalog. Each change is one JSON line,
appended and fsync'ed before the change is applied in memory, so a change the API acknowledged is on
disk. Replaying is idempotent: an add whose item the loaded model already has (a retrain folded it in)
and a removal of an item that is gone are skipped. A torn last line (a crash mid-write) is skipped
with a warning; nothing else is lost.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOG_NAME = "live_catalog.jsonl"


@dataclass
class ReplayStats:
    applied: int = 0
    skipped: int = 0  # no-ops on this model (already there / already gone) and unreadable lines


class LiveCatalogLog:
    """Append-only JSON-lines file of {"op": "add" | "remove", "item_id": ..., ...} records."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, op: str, item_id: Any, **fields: Any) -> None:
        """Write one change durably (flush + fsync); raises OSError when the log cannot be written."""
        record = {"op": op, "item_id": item_id, **fields, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())

    def records(self) -> list[dict]:
        """Every readable record, oldest first (unreadable lines are logged and left out)."""
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    if record.get("op") not in ("add", "remove") or "item_id" not in record:
                        raise ValueError("no op/item_id")
                except ValueError as err:
                    logger.warning("%s line %d is not a live-catalog record (%s); skipped", self.path, number, err)
                    continue
                out.append(record)
        return out

    def replay(self, recommender) -> ReplayStats:
        """Apply the log to a freshly loaded recommender (without logging the changes again)."""
        stats = ReplayStats()
        for record in self.records():
            item_id = record["item_id"]
            try:
                if record["op"] == "add":
                    if recommender.has_item(item_id):
                        stats.skipped += 1
                        continue
                    recommender.add_item(
                        item_id, record.get("title") or str(item_id), text=record.get("text"),
                        image_path=record.get("image_path"), categories=record.get("categories"), log=False,
                    )
                else:
                    if not recommender.has_item(item_id):
                        stats.skipped += 1
                        continue
                    recommender.remove_item(item_id, log=False)
                stats.applied += 1
            except (ValueError, KeyError, OSError) as err:
                logger.warning("%s: could not replay %s of item %r: %s", self.path, record["op"], item_id, err)
                stats.skipped += 1
        if stats.applied or stats.skipped:
            logger.info("live catalog %s: %d change(s) replayed, %d skipped", self.path, stats.applied, stats.skipped)
        return stats
