"""The small, fast training settings every test that trains uses, in one place: the library tests pass
them to `load_config` (tests/conftest.py `tiny_config`), the CLI tests as `-s key=value` pairs."""

from __future__ import annotations

TINY_TRAINING = {
    "encoders.image.enabled": False,
    "model.dim": 32,
    "model.head_hidden": 64,
    "model.max_history": 20,
    "train.epochs": 2,
    "train.num_uniform_negatives": 64,
    "train.tune": False,  # the recipe's own tests turn it on
}


def cli_overrides(**extra: object) -> list[str]:
    """TINY_TRAINING (plus `extra`, dots written as `__`) as the CLI's `-s key=value` arguments."""
    settings = {**TINY_TRAINING, **{key.replace("__", "."): value for key, value in extra.items()}}
    args: list[str] = []
    for key, value in settings.items():
        args += ["-s", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    return args
