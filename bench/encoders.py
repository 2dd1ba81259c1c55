"""Encoder throughput on real ml-100k items: text sentences/s, images/s with channels_last on vs off.

Usage: python bench/encoders.py [--n-text 200] [--n-images 64] [--repeats 2]
Writes bench/results/encoders.json. Timings are end to end (images include JPEG decode + preprocessing).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

from recsys.paths import shared_data_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import polars as pl  # noqa: E402
import torch  # noqa: E402

from recsys.config import ImageEncoderConfig, TextEncoderConfig  # noqa: E402
from recsys.encoders import ImageEncoder, TextEncoder, build_item_texts  # noqa: E402
from recsys.encoders.store import atomic_write_bytes  # noqa: E402

DATA = shared_data_dir()
OUT = Path(__file__).parent / "results" / "encoders.json"
log = logging.getLogger("bench.encoders")


def best_time(fn, repeats: int) -> float:
    """Fastest of `repeats` runs (after the caller's warm-up): least disturbed by other load."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-text", type=int, default=200)
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    items = pl.read_parquet(DATA / "ml-100k" / "items.parquet")
    catalog = items.select(
        "item_id", "title", pl.col("description").alias("text"), pl.col("genres").alias("categories")
    )
    texts = [t for t in build_item_texts(catalog, ["title", "categories", "text"]) if t][: args.n_text]
    posters = [str(DATA / p) for p in items["poster_file"].drop_nulls().to_list()[: args.n_images]]

    text_cfg = TextEncoderConfig()
    text_enc = TextEncoder(text_cfg)
    text_enc.encode(texts[:16])  # warm-up
    text_s = best_time(lambda: text_enc.encode(texts), args.repeats)

    img = {}
    encoders = {cl: ImageEncoder(ImageEncoderConfig(channels_last=cl)) for cl in (False, True)}
    for enc in encoders.values():
        enc.encode(posters[:8])  # warm-up
    for cl, enc in encoders.items():
        img[cl] = best_time(lambda e=enc: e.encode(posters), args.repeats)

    result = {
        "text": {
            "model": text_enc.fingerprint,
            "n": len(texts),
            "batch_size": text_cfg.batch_size,
            "mean_chars": sum(map(len, texts)) / len(texts),
            "seconds": round(text_s, 3),
            "sentences_per_s": round(len(texts) / text_s, 1),
        },
        "image": {
            "model": encoders[True].fingerprint,
            "n": len(posters),
            "batch_size": ImageEncoderConfig().batch_size,
            "images_per_s_channels_last": round(len(posters) / img[True], 1),
            "images_per_s_contiguous": round(len(posters) / img[False], 1),
            "channels_last_speedup": round(img[False] / img[True], 3),
        },
        "env": {
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "repeats": args.repeats,
            "note": "best of repeats after warm-up; CPUs may be shared with other jobs",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())
    log.info("wrote %s\n%s", args.out, json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
