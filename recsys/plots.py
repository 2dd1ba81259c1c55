"""Plots of a training or evaluation run, logged to its MLflow run as PNG (and one HTML) artifacts.

One module, thin calls from the pipeline steps (`log_validation_plots`, `log_model_plots`,
`log_evaluation_plots`, `log_protocol_plots`), the same figures in the notebooks:

- `curves_figure`: training losses and validation metrics per epoch (best epoch marked);
- `baselines_figure` / `protocols_figure`: the model beside the same-run baselines;
- `segment_metrics` + `segments_figure`: the metric per segment of the queries (users by history
  length; target items new / long tail / head by their training count);
- `item_map_figure`: the item vectors on their first two principal components, coloured by category;
- `poster_gallery` / `gallery_html`: a few users' latest items then their recommendations, as posters.

Figures are built without pyplot (`matplotlib.figure.Figure`): no backend is chosen and no global state
is touched, so they render headless in a job and inline in a notebook. A plot that fails is logged as
a warning and skipped: plotting never fails a run.
"""

from __future__ import annotations

import base64
import functools
import html
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from recsys.eval.metrics import mean_over_users, per_user
from recsys.eval.protocol import EvalQueries, RankingJudge, metric_cutoff

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from recsys.encoders.features import ItemFeatures
    from recsys.model.fitting import TrainResult
    from recsys.tracking import Tracker

log = logging.getLogger(__name__)

MODEL = "recsys"
COLORS = {"recsys": "#2f6fb3", "popularity": "#b9b9b9", "content_knn": "#8c8c8c"}
HEAD_SHARE = 0.2  # "head" items: the top 20% of the items seen in training, by training count
PLOTS_DIR = "plots"


@contextmanager
def guarded(what: str) -> Iterator[None]:
    """Run one plot; on any error log a warning naming it and go on."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - a plot never fails a run
        log.warning("plot %s skipped: %s: %s", what, type(err).__name__, err)


def never_fails(what: str):
    """Decorator: the step's plotting call logs a warning instead of raising (returns None then)."""
    def wrap(func):
        @functools.wraps(func)
        def call(*args, **kwargs):
            with guarded(what):
                return func(*args, **kwargs)
            return None
        return call
    return wrap


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _color(name: str, i: int = 0) -> str:
    return COLORS.get(name, ["#e0904a", "#6aa84f", "#9b59b6", "#c0504d"][i % 4])


def _label(metric_key: str) -> str:
    """'valid/ndcg_at_10' -> 'ndcg@10'."""
    return metric_key.split("/")[-1].replace("_at_", "@")


# --------------------------------------------------------------------------- curves


def curves_figure(history: Sequence[Mapping[str, Any]], monitor: str | None = None, best_epoch: int | None = None,
                  refit_history: Sequence[Mapping[str, Any]] = ()) -> Figure | None:
    """Train losses (left) and validation metrics (right) per epoch; one line per ensemble member;
    the refit on every interaction dashed. None when there is no history."""
    if not history and not refit_history:
        return None
    fig = _figure(10, 3.6)
    ax_loss, ax_valid = fig.subplots(1, 2)
    members = sorted({int(e.get("member", 1)) for e in history}) or [1]
    train_keys = sorted({k for e in history for k in e if k.startswith("train/")})
    valid_keys = sorted({k for e in history for k in e if k.startswith("valid/")}, key=lambda k: (k != monitor, k))
    for m_i, member in enumerate(members):
        rows = [e for e in history if int(e.get("member", 1)) == member]
        suffix = f" (member {member})" if len(members) > 1 else ""
        for k_i, key in enumerate(train_keys):
            pts = [(e["epoch"], e[key]) for e in rows if key in e]
            if pts:
                ax_loss.plot(*zip(*pts), marker="o", ms=3, color=f"C{(k_i + m_i * len(train_keys)) % 10}",
                             label=key.split("/", 1)[1] + suffix)
        for k_i, key in enumerate(valid_keys):
            pts = [(e["epoch"], e[key]) for e in rows if key in e]
            if pts:
                ax_valid.plot(*zip(*pts), marker="o", ms=3, lw=2.2 if key == monitor else 1.2,
                              color=f"C{(k_i + m_i * len(valid_keys)) % 10}", label=_label(key) + suffix)
    refit = [(e["epoch"], e["train/loss"]) for e in refit_history if "train/loss" in e]
    if refit:
        ax_loss.plot(*zip(*refit), ls="--", color="0.4", label="loss, refit on every interaction")
    if best_epoch is not None and best_epoch >= 0 and valid_keys:
        ax_valid.axvline(best_epoch, color="0.3", ls=":", lw=1)
        ax_valid.annotate(f"best epoch {best_epoch}", (best_epoch, 1), xycoords=("data", "axes fraction"),
                          xytext=(3, -12), textcoords="offset points", fontsize=8, color="0.3")
    ax_loss.set(title="training loss", xlabel="epoch")
    ax_valid.set(title="validation (held-out last item per user)" if valid_keys else "no validation", xlabel="epoch")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_valid):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig


# --------------------------------------------------------------------------- model vs baselines


def baselines_figure(metric: str, model_value: float, baselines: Mapping[str, float], title: str | None = None) -> Figure:
    """Horizontal bars: the model and each same-run baseline on one metric; the title says who wins."""
    names = [MODEL, *baselines]
    values = [float(model_value), *map(float, baselines.values())]
    fig = _figure(6, 0.6 + 0.45 * len(names))
    ax = fig.subplots()
    y = np.arange(len(names))[::-1]
    ax.barh(y, values, color=[_color(n, i) for i, n in enumerate(names)])
    for yi, v in zip(y, values):
        ax.annotate(f"{v:.4f}", (v, yi), xytext=(3, 0), textcoords="offset points", va="center", fontsize=9)
    ax.set_yticks(y, names)
    ax.set_xlim(0, max(values + [1e-9]) * 1.25)
    losing = [n for n, v in baselines.items() if not float(model_value) > float(v)]
    verdict = f"does not beat {', '.join(losing)}" if losing else "beats every baseline"
    ax.set_title(title or f"validation {metric}: the model {verdict}", fontsize=10)
    ax.set_xlabel(metric)
    ax.grid(axis="x", alpha=0.3)
    return fig


def protocols_figure(results: Mapping[str, Mapping[str, Mapping[str, float]]], metric: str = "ndcg@10") -> Figure | None:
    """Grouped bars: each protocol (loo: known items, cold: new items, temporal: the future) x each model."""
    described = {"loo": "loo\n(known items)", "cold": "cold\n(new items)", "temporal": "temporal\n(the future)"}
    return grouped_bars(results, metric, f"test {metric} per protocol, same split for every model", f"test {metric}", described)


def grouped_bars(results: Mapping[str, Mapping[str, Mapping[str, float]]], metric: str, title: str, ylabel: str,
                 described: Mapping[str, str] | None = None) -> Figure | None:
    """Bars of `metric` for each group (a protocol, a run) x each model in it (recsys, the baselines)."""
    described = described or {}
    protocols = [p for p in results if any(metric in m for m in results[p].values())]
    if not protocols:
        return None
    names = list(dict.fromkeys(n for p in protocols for n in results[p]))
    fig = _figure(1.6 + 1.7 * len(protocols), 3.6)
    ax = fig.subplots()
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = np.arange(len(protocols)) + (i - (len(names) - 1) / 2) * width
        vals = [float(results[p].get(name, {}).get(metric, np.nan)) for p in protocols]
        ax.bar(xs, vals, width, color=_color(name, i), label=name)
        for x, v in zip(xs, vals):
            if np.isfinite(v):
                ax.annotate(f"{v:.3f}", (x, v), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7)
    ax.set_xticks(np.arange(len(protocols)), [described.get(p, p) for p in protocols])
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


# --------------------------------------------------------------------------- segments


def history_buckets(lengths: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Each query's bucket (0, 1, 2: shortest third .. longest third of history lengths) and labels."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0:
        return np.zeros(0, np.int64), []
    a, b = np.quantile(lengths, [1 / 3, 2 / 3]).astype(int)
    edges = sorted({int(lengths.min()) - 1, a, max(a, b), int(lengths.max())})
    bucket = np.searchsorted(np.asarray(edges[1:]), lengths, side="left")
    labels = [f"{lo + 1}-{hi} items" if hi > lo + 1 else f"{hi} items" for lo, hi in zip(edges[:-1], edges[1:])]
    return bucket, labels


def item_segments(popularity: np.ndarray) -> np.ndarray:
    """Each catalog row's segment by its training count: 0 new (never seen in training), 1 long tail,
    2 head (the top HEAD_SHARE of the seen items)."""
    counts = np.asarray(popularity, dtype=np.float64)
    seg = np.zeros(counts.shape[0], dtype=np.int64)
    seen = counts > 0
    if seen.any():
        cut = np.quantile(counts[seen], 1 - HEAD_SHARE)
        seg[seen] = 1
        seg[seen & (counts > cut)] = 2
    return seg


ITEM_SEGMENTS = (("new items", "items_new"), ("long tail", "items_tail"), ("head", "items_head"))


def segment_metrics(queries: EvalQueries, ranked: Mapping[str, np.ndarray], popularity: np.ndarray,
                    metric: str = "ndcg@10") -> pl.DataFrame:
    """`metric` of each ranking (model name -> [n_queries, k] item rows) per segment: `users` by history
    length (thirds) and target `items` by training count (a query's targets cut to the segment's items;
    queries with none there are left out). Columns: group, segment, key, model, value, n_queries."""
    kind, k = metric.split("@")[0], metric_cutoff(metric)
    rows: list[dict] = []
    lengths = np.fromiter((len(h) for h in queries.histories), dtype=np.int64, count=len(queries))
    bucket, labels = history_buckets(lengths)
    item_seg = item_segments(popularity)
    for name, ranks in ranked.items():
        values = per_user(kind, ranks, queries.targets, k)
        for b, label in enumerate(labels):
            mask = bucket == b
            rows.append({"group": "users by history length", "segment": label, "key": f"users_{('short', 'medium', 'long')[b] if len(labels) == 3 else b}",
                         "model": name, "value": mean_over_users(values[mask]), "n_queries": int((mask & ~np.isnan(values)).sum())})
        for s, (label, key) in enumerate(ITEM_SEGMENTS):
            cut = [t[item_seg[t] == s] for t in queries.targets]
            vals = per_user(kind, ranks, cut, k)
            n = int((~np.isnan(vals)).sum())
            if n:
                rows.append({"group": "target items by training count", "segment": label, "key": key,
                             "model": name, "value": mean_over_users(vals), "n_queries": n})
    return pl.DataFrame(rows, schema={"group": pl.String, "segment": pl.String, "key": pl.String, "model": pl.String,
                                      "value": pl.Float64, "n_queries": pl.Int64})


def segments_figure(segments: pl.DataFrame, metric: str = "ndcg@10", title: str = "validation") -> Figure | None:
    """One panel per segment group, grouped bars per model, each segment's query count under it."""
    if segments.is_empty():
        return None
    groups = list(dict.fromkeys(segments["group"].to_list()))
    models = list(dict.fromkeys(segments["model"].to_list()))
    fig = _figure(5.2 * len(groups), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(groups)))
    for ax, group in zip(axes, groups):
        part = segments.filter(pl.col("group") == group)
        segs = list(dict.fromkeys(part["segment"].to_list()))
        width = 0.8 / len(models)
        for i, model in enumerate(models):
            by_seg = {r["segment"]: r["value"] for r in part.filter(pl.col("model") == model).iter_rows(named=True)}
            xs = np.arange(len(segs)) + (i - (len(models) - 1) / 2) * width
            ax.bar(xs, [by_seg.get(s, np.nan) for s in segs], width, color=_color(model, i), label=model)
        counts = {r["segment"]: r["n_queries"] for r in part.filter(pl.col("model") == models[0]).iter_rows(named=True)}
        ax.set_xticks(np.arange(len(segs)), [f"{s}\n(n={counts.get(s, 0)})" for s in segs], fontsize=8)
        ax.set_title(group, fontsize=10)
        ax.set_ylabel(metric)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title} {metric} by segment", fontsize=11)
    return fig


# --------------------------------------------------------------------------- item map


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """[n, 2] coordinates on the first two principal components (numpy SVD)."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def primary_categories(categories: Sequence[Sequence[str] | None], top: int = 9) -> list[str]:
    """One colour class per item: the rarest of its categories (the most telling; "Drama" only for a
    plain drama), kept when it is among the `top` most common such classes, else "other"."""
    lists = [list(c) if c is not None else [] for c in categories]
    freq: dict[str, int] = {}
    for cats in lists:
        for c in cats:
            freq[c] = freq.get(c, 0) + 1
    primary = [min(cats, key=lambda c: (freq[c], c)) if cats else "none" for cats in lists]
    counts: dict[str, int] = {}
    for p in primary:
        counts[p] = counts.get(p, 0) + 1
    keep = {p for p, _ in sorted(counts.items(), key=lambda kv: -kv[1])[:top] if p != "none"}
    return [p if p in keep else "other" for p in primary]


def item_map_figure(vectors: np.ndarray, categories: Sequence[Sequence[str] | None] | None = None,
                    titles: Sequence[str] | None = None, popularity: np.ndarray | None = None,
                    n_labels: int = 12, title: str = "item vectors (PCA)") -> Figure:
    """The items on the first two principal components of their vectors, coloured by category, sized
    by training count; the most popular titles labelled."""
    xy = pca_2d(vectors)
    n = xy.shape[0]
    pop = np.asarray(popularity, dtype=np.float64) if popularity is not None else np.ones(n)
    sizes = 6 + 40 * np.sqrt(pop / max(pop.max(), 1.0))
    classes = primary_categories(categories) if categories is not None else ["items"] * n
    fig = _figure(7.5, 6)
    ax = fig.subplots()
    order = sorted(set(classes), key=lambda c: (c == "other", -classes.count(c), c))
    for i, cls in enumerate(order):
        mask = np.asarray([c == cls for c in classes])
        ax.scatter(xy[mask, 0], xy[mask, 1], s=sizes[mask], alpha=0.75, linewidths=0,
                   color="0.75" if cls == "other" else f"C{i % 10}", label=f"{cls} ({int(mask.sum())})")
    if titles is not None and n_labels:
        for row in np.argsort(-pop, kind="stable")[:n_labels]:
            ax.annotate(str(titles[row])[:28], xy[row], fontsize=7, alpha=0.85, xytext=(3, 3), textcoords="offset points")
    ax.set(title=title, xlabel="PC 1", ylabel="PC 2")
    ax.legend(fontsize=7, markerscale=1.5, loc="best", title="category (rarest of the item's)", title_fontsize=7)
    ax.grid(alpha=0.2)
    return fig


# --------------------------------------------------------------------------- poster gallery


@dataclass
class GalleryRow:
    """One user: their latest items (oldest first) and the model's top items for them (best first)."""

    user_id: Any
    history: list[Any]
    recommended: list[Any]
    n_history: int  # the whole history's length


def pick_gallery_users(lengths: Mapping[Any, int], n: int = 4, seed: int = 0, lo: int = 15, hi: int = 80) -> list[Any]:
    """`n` users, seeded, among those with a history of lo..hi items (else any)."""
    users = sorted(lengths, key=str)
    pool = [u for u in users if lo <= lengths[u] <= hi] or users
    if not pool:
        return []
    pick = np.random.default_rng(seed).choice(len(pool), size=min(n, len(pool)), replace=False)
    return [pool[i] for i in sorted(pick)]


def _font(size: int):
    from PIL import ImageFont

    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except Exception:  # noqa: BLE001 - any font will do
        return ImageFont.load_default()


def _poster(path: Any, title: str, size: tuple[int, int]):
    """The item's poster scaled into `size`, or a grey card with its title when there is none."""
    from PIL import Image, ImageDraw

    tile = Image.new("RGB", size, (236, 236, 236))
    if path:
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                img.thumbnail(size)
                tile.paste(img, ((size[0] - img.width) // 2, (size[1] - img.height) // 2))
                return tile
        except OSError:
            pass
    draw = ImageDraw.Draw(tile)
    font = _font(10)
    words, lines, line = str(title).split(), [], ""
    for word in words:
        if draw.textlength(f"{line} {word}".strip(), font=font) > size[0] - 8 and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    for i, text in enumerate(lines[:7]):
        draw.text((4, 6 + 13 * i), text, fill=(60, 60, 60), font=font)
    return tile


def _catalog_lookup(catalog: pl.DataFrame) -> dict[Any, tuple[str, Any]]:
    images = catalog["image"].to_list() if "image" in catalog.columns else [None] * catalog.height
    titles = catalog["title"].to_list() if "title" in catalog.columns else [str(i) for i in catalog["item_id"].to_list()]
    return dict(zip(catalog["item_id"].to_list(), zip(titles, images)))


def poster_gallery(rows: Sequence[GalleryRow], catalog: pl.DataFrame, poster: tuple[int, int] = (96, 140)):
    """A PIL image: per user, their latest items' posters, a gap, then the recommended posters, titles
    under each."""
    from PIL import Image, ImageDraw

    lookup = _catalog_lookup(catalog)
    pw, ph = poster
    gap, pad, caption, header = 28, 6, 28, 22
    n_hist = max((len(r.history) for r in rows), default=0)
    n_rec = max((len(r.recommended) for r in rows), default=0)
    width = pad + (n_hist + n_rec) * (pw + pad) + gap + pad
    row_h = header + ph + caption + pad
    canvas = Image.new("RGB", (width, max(1, len(rows)) * row_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    bold, small = _font(13), _font(9)
    for r_i, row in enumerate(rows):
        top = pad + r_i * row_h
        rec_x = pad + n_hist * (pw + pad) + gap
        draw.text((pad, top + 3), f"user {row.user_id}: last {len(row.history)} of {row.n_history} items", fill="black", font=bold)
        draw.text((rec_x, top + 3), f"recommended (top {len(row.recommended)})", fill=(30, 90, 160), font=bold)
        for i, item in enumerate(row.history):
            x = pad + (n_hist - len(row.history) + i) * (pw + pad)
            _paste(canvas, draw, item, lookup, (x, top + header), poster, small)
        draw.line([(rec_x - gap // 2, top + header), (rec_x - gap // 2, top + header + ph)], fill=(120, 120, 120), width=2)
        for i, item in enumerate(row.recommended):
            _paste(canvas, draw, item, lookup, (rec_x + i * (pw + pad), top + header), poster, small, border=(30, 90, 160))
    return canvas


def save_png(image, path: str | Path) -> None:
    """A gallery as PNG in 256 adaptive colours: posters stay readable at a third of the size."""
    Path(path).write_bytes(png_bytes(image))


def png_bytes(image) -> bytes:
    """`save_png`'s bytes (for `IPython.display.Image` in a notebook: small outputs)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def poster_grid(item_ids: Sequence[Any], catalog: pl.DataFrame, columns: int = 10, poster: tuple[int, int] = (96, 140),
                title: str | None = None, highlight: Sequence[Any] = ()):
    """A PIL image: the items' posters (a title card where there is none) in rows of `columns`, titles
    under each; `highlight`ed items framed."""
    from PIL import Image, ImageDraw

    lookup = _catalog_lookup(catalog)
    pw, ph = poster
    pad, caption, header = 6, 28, 24 if title else 0
    n_rows = max(1, -(-len(item_ids) // columns))
    width = pad + min(columns, max(1, len(item_ids))) * (pw + pad)
    canvas = Image.new("RGB", (width, header + n_rows * (ph + caption + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 5), title, fill="black", font=_font(13))
    small, marked = _font(9), set(highlight)
    for i, item in enumerate(item_ids):
        at = (pad + (i % columns) * (pw + pad), header + pad + (i // columns) * (ph + caption + pad))
        _paste(canvas, draw, item, lookup, at, poster, small, border=(30, 90, 160) if item in marked else None)
    return canvas


def _paste(canvas, draw, item, lookup, at, size, font, border=None) -> None:
    title, image = lookup.get(item, (str(item), None))
    canvas.paste(_poster(image, title, size), at)
    if border:
        draw.rectangle([at[0] - 1, at[1] - 1, at[0] + size[0], at[1] + size[1]], outline=border, width=2)
    text = str(title)
    for line_i in range(2):
        part, text = _fit(draw, text, font, size[0])
        draw.text((at[0], at[1] + size[1] + 2 + 11 * line_i), part, fill=(40, 40, 40), font=font)
        if not text:
            break


def _fit(draw, text: str, font, width: int) -> tuple[str, str]:
    """The longest word-wise prefix of `text` that fits `width` pixels, and the rest."""
    words = text.split()
    line = ""
    for i, word in enumerate(words):
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) > width and line:
            return line, " ".join(words[i:])
        line = candidate
    return line, ""


def _data_uri(path: Any, size: tuple[int, int] = (96, 140)) -> str | None:
    """A poster as an inline JPEG (the file's own bytes when small, else a thumbnail)."""
    if not path:
        return None
    try:
        raw = Path(path).read_bytes()
        if len(raw) > 40_000 or not str(path).lower().endswith((".jpg", ".jpeg")):
            import io

            from PIL import Image

            with Image.open(path) as img:
                img = img.convert("RGB")
                img.thumbnail(size)
                buffer = io.BytesIO()
                img.save(buffer, "JPEG", quality=80)
                raw = buffer.getvalue()
        return "data:image/jpeg;base64," + base64.b64encode(raw).decode("ascii")
    except OSError:
        return None


def gallery_html(rows: Sequence[GalleryRow], catalog: pl.DataFrame, title: str = "Recommendations") -> str:
    """The gallery as one self-contained HTML page (posters embedded as base64), which renders inside
    MLflow's artifact viewer."""
    lookup = _catalog_lookup(catalog)

    def card(item, rec: bool) -> str:
        name, image = lookup.get(item, (str(item), None))
        uri = _data_uri(image)
        pic = (f'<img src="{uri}" alt="{html.escape(str(name))}">' if uri
               else f'<div class="blank">{html.escape(str(name))}</div>')
        return f'<figure class="{"rec" if rec else "seen"}">{pic}<figcaption>{html.escape(str(name))}</figcaption></figure>'

    g = ".recsys-gallery"  # every rule scoped, so the page can be embedded (a notebook output) without leaking
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>", html.escape(title), "</title><style>",
        f"{g}{{font-family:sans-serif;margin:12px;color:#222}}{g} h1{{font-size:18px}}{g} h2{{font-size:15px;margin:18px 0 6px}}",
        f"{g} .row{{display:flex;align-items:flex-start;gap:6px;flex-wrap:wrap;margin-bottom:4px}}",
        f"{g} .label{{font-size:12px;color:#555;margin:6px 0 3px}}{g} .rec-label{{color:#1e5aa0}}",
        f"{g} figure{{margin:0;width:84px;flex:none}}",
        f"{g} img,{g} .blank{{width:84px;height:123px;object-fit:contain;background:#eee;display:block}}",
        f"{g} .blank{{font-size:11px;padding:4px;box-sizing:border-box}}{g} .rec img,{g} .rec .blank{{outline:2px solid #1e5aa0}}",
        f"{g} figcaption{{font-size:10px;line-height:12px;height:24px;overflow:hidden}}",
        "</style></head><body><div class='recsys-gallery'><h1>", html.escape(title), "</h1>",
        "<p>Per user: their latest items (oldest first), then the model's recommendations (best first, "
        "seen items excluded).</p>",
    ]
    for row in rows:
        parts.append(f"<h2>user {html.escape(str(row.user_id))}</h2>"
                     f"<div class='label'>last {len(row.history)} of {row.n_history} items, oldest first</div><div class='row'>")
        parts += [card(i, False) for i in row.history]
        parts.append(f"</div><div class='label rec-label'>recommended (top {len(row.recommended)})</div><div class='row'>")
        parts += [card(i, True) for i in row.recommended]
        parts.append("</div>")
    parts.append("</div></body></html>")
    return "".join(parts)


def gallery_rows(model, features: ItemFeatures, interactions: pl.DataFrame, users: Sequence[Any], *,
                 n_history: int = 8, k: int = 8, seed: int = 0) -> list[GalleryRow]:
    """Each user's latest `n_history` items and `model`'s top `k` (seen items excluded), scored from
    the user's whole history exactly as serving does."""
    from recsys.data.histories import histories_by_user
    from recsys.data.splits import order_interactions
    from recsys.model.two_tower import ModelScorer

    item_ids = np.asarray(features.item_ids)
    index = {item: row for row, item in enumerate(item_ids.tolist())}
    mine = interactions.filter(pl.col("user_id").is_in(pl.Series(list(users)).implode()))
    user_ids, histories = histories_by_user(order_interactions(mine, seed), index)
    if not len(user_ids):
        return []
    queries = EvalQueries(user_ids, histories, [np.zeros(0, np.int64)] * len(user_ids), [np.unique(h) for h in histories])
    ranked = RankingJudge(queries, len(item_ids)).rank(ModelScorer(model, model.feature_tensors(features)), k)
    return [GalleryRow(user, item_ids[h[-n_history:]].tolist(), item_ids[r[r >= 0]].tolist(), len(h))
            for user, h, r in zip(user_ids.tolist(), histories, ranked)]


# --------------------------------------------------------------------------- logging from the steps


def _save(fig, folder: Path, name: str, written: list[Path]) -> None:
    if fig is None:
        return
    path = folder / name
    fig.savefig(path, dpi=100)
    written.append(path)


def _log_folder(tracker: Tracker, folder: Path, written: list[Path]) -> None:
    if written:
        tracker.log_artifacts(folder, PLOTS_DIR)
        log.info("logged %d plots to MLflow (%s/)", len(written), PLOTS_DIR)


@never_fails("validation plots")
def log_validation_plots(tracker: Tracker, features: ItemFeatures, train: pl.DataFrame, valid: pl.DataFrame,
                         result: TrainResult, refit_history: Sequence[Mapping[str, Any]] = ()) -> pl.DataFrame | None:
    """In the `train` step run, for the model chosen on validation (before its refit; the refit's loss
    curve is in the run's metrics, `refit-train/loss`): its curves, its
    validation score beside the baselines, and the score per segment of the same validation queries it
    was early-stopped on (users by history length; target items new / tail / head: a user's held-out
    last item is rarely new, so "new" often has no queries here; the `cold` protocol's evaluation
    measures new items). Returns the segment table (None if it could not be made)."""
    if not tracker.enabled:
        return None
    segments = None
    with tempfile.TemporaryDirectory() as tmp:
        folder, written = Path(tmp), []
        with guarded("training curves"):
            _save(curves_figure(result.history, result.valid_metric_name, result.best_epoch, refit_history), folder, "curves.png", written)
        if result.baselines:
            with guarded("baselines"):
                metric = _label(result.valid_metric_name)
                _save(baselines_figure(metric, result.best_metric, result.baselines), folder, "baselines.png", written)
        with guarded("validation segments"):
            segments = validation_segments(features, train, valid, result)
            if segments is not None and not segments.is_empty():
                metric = _label(result.valid_metric_name)
                _save(segments_figure(segments, metric, "validation"), folder, "segments.png", written)
                segments.write_csv(folder / "segments.csv")
                tracker.log_metrics({f"valid_segment.{r['key']}": r["value"]
                                     for r in segments.filter(pl.col("model") == MODEL).iter_rows(named=True)})
        _log_folder(tracker, folder, written)
    return segments


def validation_segments(features: ItemFeatures, train: pl.DataFrame, valid: pl.DataFrame, result: TrainResult) -> pl.DataFrame | None:
    """`segment_metrics` of the model and the baselines on the validation queries of `fit_two_tower`
    (rebuilt with the same settings, so the same users, ranked the same way)."""
    from recsys.eval.baselines import ContentKNNScorer, PopularityScorer, frozen_content_embeddings
    from recsys.model.train import prepare_training_data
    from recsys.model.two_tower import ModelScorer

    cfg = result.config
    if cfg is None or valid.is_empty():
        return None
    data = prepare_training_data(features, train, valid, cfg)
    if data.valid is None:
        return None
    metric = cfg.train.valid_metric
    k = metric_cutoff(metric)
    scorers = [ModelScorer(result.model, result.model.feature_tensors(features)), PopularityScorer.from_counts(data.popularity)]
    if features.text is not None or features.image is not None:
        scorers.append(ContentKNNScorer(frozen_content_embeddings(features)))
    ranked = {s.name: data.valid.rank(s, k) for s in scorers}
    return segment_metrics(data.valid.queries, ranked, data.popularity, metric)


@never_fails("model plots")
def log_model_plots(tracker: Tracker, catalog: pl.DataFrame, features: ItemFeatures, interactions: pl.DataFrame,
                    model, *, seed: int = 0, n_users: int = 4) -> None:
    """In the `train` step run, for the model that is bundled: the item map and a poster gallery
    (PNG and HTML) of a few users."""
    if not tracker.enabled:
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder, written = Path(tmp), []
        item_ids = np.asarray(features.item_ids)
        counts = dict(interactions.group_by("item_id").len().iter_rows())
        popularity = np.asarray([counts.get(i, 0) for i in item_ids.tolist()], dtype=np.float64)
        with guarded("item map"):
            vectors, _ = model.encode_items_with_bias(model.feature_tensors(features))
            meta = catalog.select("item_id", *[c for c in ("title", "categories") if c in catalog.columns])
            by_id = {r["item_id"]: r for r in meta.iter_rows(named=True)}
            cats = [by_id.get(i, {}).get("categories") for i in item_ids.tolist()] if "categories" in meta.columns else None
            titles = [by_id.get(i, {}).get("title", str(i)) for i in item_ids.tolist()]
            _save(item_map_figure(vectors, cats, titles, popularity), folder, "item_map.png", written)
        with guarded("poster gallery"):
            lengths = dict(interactions.group_by("user_id").len().iter_rows())
            rows = gallery_rows(model, features, interactions, pick_gallery_users(lengths, n_users, seed), seed=seed)
            if rows:
                save_png(poster_gallery(rows, catalog), folder / "gallery.png")
                written.append(folder / "gallery.png")
                (folder / "gallery.html").write_text(gallery_html(rows, catalog, "Recommendations of the bundled model"))
        _log_folder(tracker, folder, written)


@never_fails("evaluation plots")
def log_evaluation_plots(tracker: Tracker, protocol: str, queries: EvalQueries, ranked: Mapping[str, np.ndarray],
                         popularity: np.ndarray, metric: str) -> None:
    """In an `evaluate-<protocol>` step run: the test metric per segment, model and baselines."""
    if not tracker.enabled:
        return
    with tempfile.TemporaryDirectory() as tmp, guarded(f"{protocol} segments"):
        folder, written = Path(tmp), []
        segments = segment_metrics(queries, ranked, popularity, metric)
        if segments.is_empty():
            return
        _save(segments_figure(segments, metric, f"{protocol} test"), folder, "segments.png", written)
        segments.write_csv(folder / "segments.csv")
        tracker.log_metrics({f"test_segment.{r['key']}": r["value"] for r in segments.filter(pl.col("model") == MODEL).iter_rows(named=True)})
        _log_folder(tracker, folder, written)


@never_fails("protocol plots")
def log_protocol_plots(tracker: Tracker, results: Mapping[str, Mapping[str, Mapping[str, float]]], metric: str = "ndcg@10") -> None:
    """In the run holding the evaluation report: every protocol's test metric, model and baselines."""
    if not tracker.enabled:
        return
    with tempfile.TemporaryDirectory() as tmp, guarded("protocols"):
        folder, written = Path(tmp), []
        _save(protocols_figure(results, metric), folder, "protocols.png", written)
        _log_folder(tracker, folder, written)
