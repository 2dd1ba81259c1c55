"""A shop's first day, end to end: string SKUs, a `description` column, `|` categories, ISO datetimes.

train (the real CLI) -> serve -> add an item -> search for it (found) -> reload -> still there ->
restart -> still there -> the batch job sees it -> delete it -> gone after a reload too.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from fastapi.testclient import TestClient

from recsys.serving import ServingSettings, create_app

ADMIN_TOKEN = "shop-admin-token"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

pytestmark = pytest.mark.slow

KINDS = {
    "Shirts": ["cotton t-shirt", "linen shirt", "flannel shirt", "polo shirt"],
    "Shoes": ["running shoes", "leather boots", "canvas sneakers", "sandals"],
    "Kitchen": ["chef knife", "cast iron pan", "espresso cups", "cutting board"],
    "Garden": ["watering can", "pruning shears", "seed tray", "garden hose"],
}
COLOURS = ["red", "blue", "black", "green", "white"]


def make_shop(folder: Path, n_users: int = 60, seed: int = 0) -> tuple[Path, Path]:
    """catalog.csv (sku, title, description, categories 'A|B', brand) and interactions.csv (ISO times)."""
    rng = random.Random(seed)
    rows = []
    for category, products in KINDS.items():
        for product in products:
            for colour in COLOURS:
                sku = f"SKU-{len(rows) + 1:04d}"
                rows.append({
                    "item_id": sku,
                    "title": f"{colour.capitalize()} {product}",
                    "description": f"A {colour} {product} from our {category.lower()} range, made to last.",
                    "categories": f"{category}|{colour.capitalize()}",
                    "brand": rng.choice(["Northwind", "Contoso", "Fabrikam"]),
                })
    catalog = pl.DataFrame(rows)
    events = []
    by_category = {c: [r["item_id"] for r in rows if r["categories"].startswith(c)] for c in KINDS}
    for user in range(n_users):
        taste = list(KINDS)[user % len(KINDS)]
        for step in range(10):
            pool = by_category[taste] if rng.random() < 0.8 else [r["item_id"] for r in rows]
            events.append({"user_id": f"u{user:03d}", "item_id": rng.choice(pool),
                           "timestamp": f"2026-11-{1 + step:02d}T{8 + user % 12:02d}:{rng.randrange(60):02d}:00"})
    folder.mkdir(parents=True, exist_ok=True)
    catalog.write_csv(folder / "catalog.csv")
    pl.DataFrame(events).unique(["user_id", "item_id"], keep="first", maintain_order=True).write_csv(folder / "interactions.csv")
    return folder / "catalog.csv", folder / "interactions.csv"


@pytest.fixture(scope="module")
def shop_bundle(tmp_path_factory) -> tuple[Path, str]:
    work = tmp_path_factory.mktemp("shop")
    catalog, interactions = make_shop(work / "shop")
    out = work / "bundle"
    done = subprocess.run(
        [sys.executable, "-m", "recsys.cli", "train", "--catalog", str(catalog), "--interactions", str(interactions),
         "--out", str(out), "--set", "encoders.image.enabled=false", "--set", f"encoders.cache_dir={work / 'features'}", "--set", f"output_dir={work / 'run'}",
         "--set", "tracking.enabled=false", "--set", "train.epochs=3", "--set", "model.dim=32", "--threads", "2", "-q"],
        capture_output=True, text=True, timeout=600, cwd=work,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout + done.stderr


def test_training_reads_the_description_column_quietly_and_reports_baselines(shop_bundle):
    bundle, output = shop_bundle
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["text_columns"] == ["title", "categories", "description", "brand"]
    assert "bundle:" in output and "popularity" in output  # the baselines are reported beside the model
    assert set(meta["valid_baselines"]) == {"popularity", "content_knn"}
    # -q: no progress bars, no INFO lines, nothing from Lightning
    assert " INFO " not in output and "lightning" not in output.lower() and "it/s" not in output


def test_added_item_is_found_survives_reload_and_restart_and_reaches_the_batch_job(shop_bundle, tmp_path):
    bundle, _ = shop_bundle
    new = {"item_id": "SKU-9001", "title": "Waterproof hiking boots",
           "text": "Leather boots with a waterproof membrane for muddy mountain trails.", "categories": ["Shoes"]}

    def search(client, query):
        response = client.post("/v1/search", json={"query": query, "k": 5})
        assert response.status_code == 200, response.text
        return [item["item_id"] for item in response.json()["items"]]

    with TestClient(create_app(ServingSettings(bundle=bundle, admin_token=ADMIN_TOKEN)), headers=ADMIN_HEADERS) as client:
        assert client.get("/v1/model").json()["live_changes"] == 0
        assert client.post("/v1/items", json=new).status_code == 201
        assert search(client, "waterproof hiking boots")[0] == "SKU-9001"  # by its title
        assert "SKU-9001" in search(client, "boots for muddy mountain trails")  # by its description
        assert search(client, "cast iron pan")[0] in {f"SKU-{i:04d}" for i in range(46, 51)}  # the catalog's own pans
        assert client.post("/admin/reload").status_code == 200  # empty body: the same bundle again
        info = client.get("/v1/model").json()
        assert info["live_changes"] == 1 and info["live_log"] == str(bundle / "live_catalog.jsonl")
        assert search(client, "waterproof hiking boots")[0] == "SKU-9001"

    with TestClient(create_app(ServingSettings(bundle=bundle, admin_token=ADMIN_TOKEN)), headers=ADMIN_HEADERS) as client:  # a restart
        assert search(client, "waterproof hiking boots")[0] == "SKU-9001"
        users = tmp_path / "users.csv"
        pl.DataFrame({"user_id": ["u001", "u002"]}).write_csv(users)
        candidates = tmp_path / "candidates.csv"
        pl.DataFrame({"item_id": ["SKU-9001", "SKU-0001"]}).write_csv(candidates)
        from pipelines.recommend import run_recommend

        recs = pl.read_parquet(run_recommend(bundle, tmp_path / "recs.parquet", k=2, users_path=users,
                                             candidates_path=candidates, show_progress=False))
        assert set(recs["item_id"]) == {"SKU-9001", "SKU-0001"}  # the batch job replays the same log

        assert client.delete("/v1/items/SKU-9001").status_code == 200
        assert "SKU-9001" not in search(client, "waterproof hiking boots")
        assert client.post("/admin/reload").status_code == 200
        assert "SKU-9001" not in search(client, "waterproof hiking boots")
        assert client.get("/v1/model").json()["live_changes"] == 2
    records = [json.loads(line) for line in (bundle / "live_catalog.jsonl").read_text().splitlines()]
    assert [(r["op"], r["item_id"]) for r in records] == [("add", "SKU-9001"), ("remove", "SKU-9001")]


def test_users_file_with_integer_ids_against_string_user_ids_is_one_clear_line(shop_bundle, tmp_path):
    bundle, _ = shop_bundle
    users = tmp_path / "users.csv"
    pl.DataFrame({"user_id": [1, 2]}).write_csv(users)
    done = subprocess.run(
        [sys.executable, "-m", "recsys.cli", "recommend", "--bundle", str(bundle), "--users", str(users),
         "--out", str(tmp_path / "r.parquet"), "-q"], capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr  # ints are read as the bundle's string ids ("1"), unknown -> popular
    recs = pl.read_parquet(tmp_path / "r.parquet")
    assert recs["user_id"].to_list()[0] == "1" and set(recs["fallback"]) == {"popular"}
    assert "Traceback" not in done.stderr
