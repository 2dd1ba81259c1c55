"""Build the small demo/test dataset in data/sample/ from the shared MovieLens 100K folder.

Keeps the most-rated items (with text, genres and a small poster each) and the ratings on them of users
who keep at least `min_user_items` of them, so tests and the demo run in seconds on real data.

    .venv/bin/python scripts/build_sample_data.py --source ../shared/data/ml-100k --out data/sample
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from recsys.paths import shared_data_dir

import polars as pl
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys.data import load_movielens, write_table  # noqa: E402

log = logging.getLogger("build_sample_data")


def _save_poster(src: Path, dst: Path, max_width: int, quality: int) -> None:
    """Downscale to at most `max_width` px wide (aspect kept), save as JPEG atomically."""
    with Image.open(src) as img:
        img = img.convert("RGB")
        if img.width > max_width:
            img = img.resize((max_width, max(1, round(img.height * max_width / img.width))), Image.Resampling.LANCZOS)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
        os.close(fd)
        try:
            img.save(tmp, format="JPEG", quality=quality, optimize=True)
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def build(source: Path, out: Path, n_items: int, min_user_items: int, max_width: int, quality: int) -> None:
    catalog, ratings = load_movielens(source)
    counts = ratings.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False])
    top = counts.head(n_items)["item_id"]
    kept = ratings.filter(pl.col("item_id").is_in(top.implode()))
    users = kept.group_by("user_id").len().filter(pl.col("len") >= min_user_items)["user_id"]
    kept = kept.filter(pl.col("user_id").is_in(users.implode()))
    items = catalog.filter(pl.col("item_id").is_in(kept["item_id"].unique().implode())).sort("item_id")

    posters = out / "posters"
    posters.mkdir(parents=True, exist_ok=True)
    rel_images: list[str | None] = []
    for item_id, image in items.select("item_id", "image").iter_rows():
        if image is None or not Path(image).is_file():
            rel_images.append(None)
            continue
        _save_poster(Path(image), posters / f"{item_id}.jpg", max_width, quality)
        rel_images.append(f"posters/{item_id}.jpg")
    wanted = {Path(p).name for p in rel_images if p}
    for stale in posters.glob("*.jpg"):
        if stale.name not in wanted:
            stale.unlink()

    sample_catalog = items.select("item_id", "title", "text", "categories", "year").with_columns(
        pl.Series("image", rel_images, dtype=pl.String)
    ).select("item_id", "title", "text", "image", "categories", "year")
    sample_ratings = kept.select("user_id", "item_id", "timestamp", "rating").sort(["user_id", "timestamp", "item_id"])
    write_table(sample_catalog, out / "catalog.parquet")
    write_table(sample_ratings, out / "interactions.parquet")
    log.info(
        "wrote %s: %d items (%d posters), %d interactions, %d users",
        out, sample_catalog.height, len(wanted), sample_ratings.height, sample_ratings["user_id"].n_unique(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=shared_data_dir() / "ml-100k")
    parser.add_argument("--out", type=Path, default=Path("data/sample"))
    parser.add_argument("--n-items", type=int, default=400)
    parser.add_argument("--min-user-items", type=int, default=5)
    parser.add_argument("--poster-width", type=int, default=96)
    parser.add_argument("--quality", type=int, default=80)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build(args.source, args.out, args.n_items, args.min_user_items, args.poster_width, args.quality)


if __name__ == "__main__":
    main()
