"""Frozen transferred encoders (text, image), their content-hash cache, and item features."""

from recsys.encoders.base import FrozenEncoder
from recsys.encoders.features import ItemFeatures, build_item_features, category_multi_hot, load_encoders
from recsys.encoders.image import ImageEncoder, preprocess_image
from recsys.encoders.store import FeatureStore
from recsys.encoders.text import TextEncoder, build_item_texts

__all__ = [
    "FeatureStore",
    "FrozenEncoder",
    "ImageEncoder",
    "ItemFeatures",
    "TextEncoder",
    "build_item_features",
    "build_item_texts",
    "category_multi_hot",
    "load_encoders",
    "preprocess_image",
]
