"""Benchmark: does text search find the item a query describes?

For 200 ml-100k items with a plot (seeded sample), two queries each: the item's title without its year
(what a shopper types) and the first sentence of its description (a paraphrase-like query). Each is
searched over the whole 1,682-item catalog with recsys.search.TextSearch (what `POST /v1/search` runs),
and with an alternative that also embeds each title alone (not served: it did not help); recall@10 =
share of queries whose item is in the top 10. Writes bench/results/search.json and its section of docs/serving.md.
Run: `python bench/search_recall.py [--n 200 --seed 0]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from recsys.config import EncodersConfig  # noqa: E402
from recsys.data.movielens import load_movielens  # noqa: E402
from recsys.encoders.features import build_item_features, load_encoders  # noqa: E402
from recsys.encoders.store import FeatureStore  # noqa: E402
from recsys.paths import shared_data_dir  # noqa: E402
from recsys.search import TextSearch  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "search.json"
DOC = ROOT / "docs" / "serving.md"
DOC_BEGIN, DOC_END = "<!-- search:begin -->", "<!-- search:end -->"


def first_sentence(text: str) -> str:
    parts = re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)
    return parts[0]


def bare_title(title: str) -> str:
    return re.sub(r"\s*\(\d{4}\)\s*$", "", title).strip()


class TitleOrText(TextSearch):
    """The alternative that was measured and not kept: the better of the full-text and title cosines."""

    def __init__(self, text, mask, titles):
        super().__init__(text, mask)
        self._titles = TextSearch(titles)

    def scores(self, query):
        return np.maximum(super().scores(query), self._titles.scores(query))


def recall_at(search: TextSearch, encoder, queries: list[str], targets: np.ndarray, k: int) -> float:
    vectors, _ = encoder.encode(queries)
    hits = 0
    for vector, target in zip(vectors, targets):
        rows, _ = search.top(search.scores(vector), k)
        hits += int(target in rows)
    return hits / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    cfg = EncodersConfig.model_validate({"image": {"enabled": False}, "cache_dir": str(ROOT / "artifacts" / "features")})
    catalog, _ = load_movielens(shared_data_dir() / "ml-100k")
    encoder = load_encoders(cfg)["text"]
    store = FeatureStore(cfg.cache_dir)
    started = time.perf_counter()
    features = build_item_features(catalog, cfg, store=store, show_progress=False)
    titles, _ = encoder.encode(catalog["title"].to_list())
    embed_s = time.perf_counter() - started

    with_text = np.flatnonzero(catalog["text"].fill_null("").str.strip_chars().str.len_chars().to_numpy() > 0)
    sample = np.sort(np.random.default_rng(args.seed).choice(with_text, args.n, replace=False))
    title_queries = [bare_title(catalog["title"][int(r)]) for r in sample]
    sentence_queries = [first_sentence(catalog["text"][int(r)]) for r in sample]

    results = {}
    for name, search in (
        ("full text (served)", TextSearch(features.text, features.text_mask)),
        ("full text or title alone, the better cosine (not served)", TitleOrText(features.text, features.text_mask, titles)),
    ):
        results[name] = {
            "title_query_recall": round(recall_at(search, encoder, title_queries, sample, args.k), 3),
            "first_sentence_query_recall": round(recall_at(search, encoder, sentence_queries, sample, args.k), 3),
        }
        print(name, results[name], flush=True)
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "command": "python bench/search_recall.py " + " ".join(sys.argv[1:]),
        "catalog_items": catalog.height,
        "queries_per_kind": args.n,
        "k": args.k,
        "encoder": encoder.fingerprint,
        "embed_seconds": round(embed_s, 1),
        "examples": [{"item": catalog["title"][int(r)], "title_query": t, "sentence_query": s}
                     for r, t, s in list(zip(sample, title_queries, sentence_queries))[:3]],
        "recall_at_k": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        f"Run {out['date']} on {out['machine']}: `{out['command']}`. {args.n} ml-100k items with a plot "
        f"(seed {args.seed}), searched over all {catalog.height} items; recall@{args.k}:",
        "",
        "| index | title query (title without the year) | first sentence of the description |",
        "|---|---:|---:|",
        *[f"| {name} | {r['title_query_recall']:.3f} | {r['first_sentence_query_recall']:.3f} |" for name, r in results.items()],
        "",
        f"Example: item {out['examples'][0]['item']!r}, queries {out['examples'][0]['title_query']!r} and "
        f"{out['examples'][0]['sentence_query']!r}.",
    ]
    doc = DOC.read_text()
    block = f"{DOC_BEGIN}\n" + "\n".join(lines) + f"\n{DOC_END}"
    if DOC_BEGIN in doc:
        head, rest = doc.split(DOC_BEGIN, 1)
        doc = head + block + rest.split(DOC_END, 1)[1]
    else:
        doc = doc.rstrip() + "\n\n## Text search quality\n\n" + block + "\n"
    DOC.write_text(doc)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
