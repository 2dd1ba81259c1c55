"""Evaluation report: one markdown table per protocol (models x metrics) plus the same data as JSON.

The settings that produced the numbers (`meta`: protocol settings, dataset, seed, ...) are written
next to them, so a number never travels without its protocol.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Results = Mapping[str, Mapping[str, Mapping[str, float]]]  # protocol -> model -> metric -> value

_NOT_RANKED = {"n_users"}  # counts, not scores: never bolded


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _metric_sort_key(name: str) -> tuple[int, int, str]:
    """recall@10, ndcg@10, hr@10, coverage@10, recall@20, ..., then others (n_users last)."""
    match = re.fullmatch(r"(\w+)@(\d+)", name)
    if match:
        order = ["recall", "ndcg", "hr", "coverage"]
        base = match.group(1)
        return (int(match.group(2)), order.index(base) if base in order else len(order), base)
    return (10**9, 0, name)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _table(models: Mapping[str, Mapping[str, float]]) -> list[str]:
    metrics = sorted({m for row in models.values() for m in row}, key=_metric_sort_key)
    best: dict[str, float] = {}
    for metric in metrics:
        if metric in _NOT_RANKED:
            continue
        values = [row[metric] for row in models.values() if isinstance(row.get(metric), (int, float))
                  and not math.isnan(row[metric])]
        if values:
            best[metric] = max(values)
    lines = ["| model | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for model, row in models.items():
        cells = []
        for metric in metrics:
            value = row.get(metric)
            text = "–" if value is None else _fmt(value)
            if metric in best and value is not None and value == best[metric]:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(results: Results, meta: Mapping[str, Any]) -> str:
    """The report as markdown (best value per metric column in bold)."""
    lines = ["# Evaluation report", ""]
    if meta:
        lines += ["## Settings", ""]
        lines += [f"- **{key}**: `{json.dumps(value, default=str)}`" for key, value in meta.items()]
        lines.append("")
    for protocol, models in results.items():
        lines += [f"## Protocol: {protocol}", ""]
        lines += _table(models) if models else ["(no models evaluated)"]
        lines.append("")
    return "\n".join(lines)


def write_report(results: Results, out_dir: str | Path, meta: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write report.md and report.json under `out_dir` (atomically); returns (md_path, json_path)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out / "report.md", out / "report.json"
    payload = {"meta": dict(meta), "results": {p: {m: dict(v) for m, v in ms.items()} for p, ms in results.items()}}
    _atomic_write_text(json_path, json.dumps(payload, indent=2, default=str))
    _atomic_write_text(md_path, render_markdown(results, meta))
    log.info("wrote evaluation report to %s", out)
    return md_path, json_path
