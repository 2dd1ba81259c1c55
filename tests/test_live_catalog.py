"""The live catalog log: durable appends, idempotent replay, a torn last line skipped."""

from __future__ import annotations

from pathlib import Path

from recsys.live_catalog import LiveCatalogLog


class ItemsOnly:
    """The two calls replay makes, on a plain set of ids."""

    def __init__(self, items):
        self.items = set(items)
        self.added: list = []

    def has_item(self, item_id) -> bool:
        return item_id in self.items

    def add_item(self, item_id, title, text=None, image_path=None, categories=None, log=True):
        assert log is False  # replay must not write the log it reads
        self.items.add(item_id)
        self.added.append((item_id, title, text, tuple(categories or ())))

    def remove_item(self, item_id, log=True):
        assert log is False
        self.items.remove(item_id)


def test_replay_applies_adds_and_removes_in_order_and_skips_what_the_model_already_has(tmp_path: Path):
    log = LiveCatalogLog(tmp_path / "live" / "log.jsonl")
    log.append("add", "A", title="Boots", text="Waterproof.", image_path=None, categories=["Shoes"])
    log.append("add", "B", title="Pan", text=None, image_path=None, categories=[])
    log.append("remove", "B")
    log.append("add", 7, title="Folded in by a retrain", text=None, image_path=None, categories=[])
    log.append("remove", "gone-already")
    model = ItemsOnly({7, "old"})
    stats = log.replay(model)
    assert model.items == {7, "old", "A"}
    assert model.added == [("A", "Boots", "Waterproof.", ("Shoes",)), ("B", "Pan", None, ())]
    assert (stats.applied, stats.skipped) == (3, 2)
    again = ItemsOnly({7, "old"})
    assert log.replay(again).applied == 3 and again.items == model.items  # replay is repeatable


def test_a_torn_last_line_is_skipped_and_nothing_else_is_lost(tmp_path: Path):
    path = tmp_path / "log.jsonl"
    log = LiveCatalogLog(path)
    log.append("add", "A", title="Boots", text=None, image_path=None, categories=[])
    with open(path, "a") as handle:
        handle.write('{"op": "add", "item_id": "B", "tit')  # a crash mid-write
    model = ItemsOnly(set())
    assert log.replay(model).applied == 1 and model.items == {"A"}
    assert LiveCatalogLog(tmp_path / "absent.jsonl").records() == []
