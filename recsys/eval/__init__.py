"""Evaluation: ranking metrics, the query protocol over a Split, baselines and the report."""

from recsys.eval.baselines import ContentKNNScorer, PopularityScorer, RandomScorer
from recsys.eval.metrics import catalog_coverage, hit_rate_at_k, ndcg_at_k, recall_at_k
from recsys.eval.protocol import EvalQueries, RankingJudge, Scorer, build_queries, evaluate, rank_items, top_k_with_ties
from recsys.eval.report import render_markdown, write_report

__all__ = [
    "ContentKNNScorer",
    "EvalQueries",
    "PopularityScorer",
    "RankingJudge",
    "RandomScorer",
    "Scorer",
    "build_queries",
    "catalog_coverage",
    "evaluate",
    "hit_rate_at_k",
    "ndcg_at_k",
    "rank_items",
    "recall_at_k",
    "render_markdown",
    "top_k_with_ties",
    "write_report",
]
