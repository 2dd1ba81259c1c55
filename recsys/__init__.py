"""recsys: recommendations from frozen, transferred item embeddings and a trained two-tower model."""

__version__ = "0.1.0"
