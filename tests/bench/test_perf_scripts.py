"""The logic of the issue-23 speed scripts (bench/embedding.py, bench/batch.py) on tiny real inputs: what
they count and write, not how fast anything is (benchmarks are not timed tests)."""

from __future__ import annotations

import polars as pl

from recsys.config import EncodersConfig
from recsys.data import read_catalog
from recsys.paths import repo_root

SAMPLE = repo_root() / "data" / "sample"


def test_embedding_counts_encoder_calls_and_reruns(text_encoder, image_encoder, tmp_path):
    from bench import embedding

    catalog = read_catalog(SAMPLE / "catalog.parquet").head(30)
    result = embedding.run(catalog, EncodersConfig(), n_images=6, repeats=1, seed=0, scratch=tmp_path)
    for modality in ("text", "image"):
        part = result[modality]
        assert part["warm"]["forward_calls"] == 0 and part["warm"]["encode_calls"] == 0
        assert part["changed_1pct"]["items_changed"] == 1
        assert part["changed_1pct"]["encoded_items"] == 1 and part["changed_1pct"]["forward_calls"] == 1
        assert part["max_abs_diff_vs_bare"] < 1e-5
        assert part["ratio"] > 0
    assert result["text"]["items"] == 30 and result["image"]["items"] == 6
    payload = embedding.build_payload(result, "tiny", 1, 0, "0.00 0.00 0.00")
    section = embedding.doc_section(payload)
    assert section.startswith("### 1. Embedding") and "target >= 0.9" in section
    missed = {**payload, "text": {**payload["text"], "ratio": 0.5}, "image": {**payload["image"], "ratio": 0.5}}
    assert "**Image: why 0.50" in embedding.doc_section(missed) and "**Text: 0.50" in embedding.doc_section(missed)


def test_count_calls_restores_the_encoder(text_encoder):
    from bench.embedding import count_calls

    with count_calls(text_encoder) as calls:
        text_encoder.encode(["a film about a dog", None], ids=[1, 2])
    assert calls.as_dict() == {"encode_calls": 1, "encoded_items": 2, "forward_calls": 1}
    assert "encode" not in vars(text_encoder)
    text_encoder.encode(["again"])
    assert calls.forward_calls == 1


def test_batch_workers_agree_and_report_memory(tiny_bundle):
    from bench import batch

    limit = batch.worker_limit(tiny_bundle, k=10)
    library = batch.worker_library(tiny_bundle, k=10, exclude_seen=False, chunk_size=64)
    users = pl.read_parquet(tiny_bundle / "users.parquet").height
    assert limit["users"] == library["users"] == users and library["rows"] == users * 10
    assert batch.agreement(limit["sample"], library["sample"]) > 0.9
    for worker in (limit, library):
        assert worker["memory"]["end"]["peak_rss_mb"] >= worker["memory"]["after_imports"]["rss_mb"] > 0
    excluded = batch.worker_library(tiny_bundle, k=10, exclude_seen=True, chunk_size=64, profile=True)
    assert 0 < excluded["rows"] <= users * 10  # a user who saw all but a few items gets fewer
    assert {"load_bundle (read, sha256 checks, model)", "write_recommendations in all"} <= set(excluded["profile_s"])
