"""Small shops cut from the demo sample, to try `recsys train`'s defaults on catalogs of a few dozen to a
few hundred items (docs/results.md, "The default recipe": the small-shop tables).

  tiny:  the N most-read sample items, 80 users with at least two of them (sampled with the seed), in
         another tool's shape: CSV, string ids, columns `product_id`/`name`/`genres` and
         `customer`/`product_id`, no time column.
  small: the 300 most-read items, 300 users (seed 1) with their first 12 interactions; string ids
         (`sku-…`, `u…`), timestamps, titles and genres, image paths that do not resolve.

Run: `python scripts/small_shops.py OUT [--items 25 --seed 0]` writes OUT/tiny-<items>-<seed>/ (catalog.csv,
orders.csv) and OUT/small/ (catalog.parquet, interactions.parquet); then, for example,
`RECSYS_HOME=OUT/home recsys train --catalog OUT/tiny-25-0/catalog.csv --interactions OUT/tiny-25-0/orders.csv --out OUT/tiny-25-0/bundle`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def most_read(interactions: pl.DataFrame, n: int) -> pl.Series:
    return interactions.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False]).head(n)["item_id"]


def tiny_shop(catalog: pl.DataFrame, interactions: pl.DataFrame, out: Path, n_items: int, seed: int) -> None:
    top = most_read(interactions, n_items)
    log = interactions.filter(pl.col("item_id").is_in(top.implode()))
    users = log.group_by("user_id").len().filter(pl.col("len") >= 2).sort("user_id")["user_id"].to_numpy()
    picked = np.sort(np.random.default_rng(seed).choice(users, 80, replace=False))
    log = log.filter(pl.col("user_id").is_in(picked.tolist())).sort(["user_id", "timestamp"])
    out.mkdir(parents=True, exist_ok=True)
    log.select(customer=pl.format("c{}", pl.col("user_id")), product_id=pl.format("sku-{}", pl.col("item_id"))).write_csv(out / "orders.csv")
    catalog.filter(pl.col("item_id").is_in(top.implode())).select(
        product_id=pl.format("sku-{}", pl.col("item_id")), name=pl.col("title"), genres=pl.col("categories").list.join("|")
    ).write_csv(out / "catalog.csv")


def small_shop(catalog: pl.DataFrame, interactions: pl.DataFrame, out: Path) -> None:
    items = most_read(interactions, 300)
    log = interactions.filter(pl.col("item_id").is_in(items.implode())).sort(["user_id", "timestamp"])
    users = np.sort(np.random.default_rng(1).choice(log["user_id"].unique().sort().to_numpy(), 300, replace=False))
    log = log.filter(pl.col("user_id").is_in(users.tolist())).group_by("user_id", maintain_order=True).head(12)
    out.mkdir(parents=True, exist_ok=True)
    log.select(pl.format("u{}", pl.col("user_id")).alias("user_id"), pl.format("sku-{}", pl.col("item_id")).alias("item_id"),
               "timestamp").write_parquet(out / "interactions.parquet")
    catalog.filter(pl.col("item_id").is_in(items.implode())).select(
        pl.format("sku-{}", pl.col("item_id")).alias("item_id"), "title", "categories",
        pl.format("img/{}.jpg", pl.col("item_id")).alias("image"),
    ).write_parquet(out / "catalog.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--items", type=int, default=25, help="tiny shop: catalog size")
    parser.add_argument("--seed", type=int, default=0, help="tiny shop: which 80 users")
    args = parser.parse_args()
    catalog, interactions = pl.read_parquet(SAMPLE / "catalog.parquet"), pl.read_parquet(SAMPLE / "interactions.parquet")
    tiny_shop(catalog, interactions, args.out / f"tiny-{args.items}-{args.seed}", args.items, args.seed)
    small_shop(catalog, interactions, args.out / "small")
    print(f"wrote {args.out / f'tiny-{args.items}-{args.seed}'} and {args.out / 'small'}")


if __name__ == "__main__":
    main()
