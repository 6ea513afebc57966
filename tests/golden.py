"""Reading the golden .npz files and config (see ../shared/golden/indextts2-tiny/GOLDEN.md).

Tests read every dimension they check from here (the golden `config.yaml`, the .npz arrays, the
checkpoint tensors), so that they hold for any golden set in the official layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from indextts2.config import load_config


def load_golden(golden_dir: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(golden_dir / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


def load_golden_config(golden_dir: Path) -> dict[str, Any]:
    """The golden set's official `config.yaml`, as the project reads it."""
    return load_config(golden_dir / "config.yaml")


def suffixed_golden(arrays: dict[str, np.ndarray], prefix: str) -> tuple[str, int]:
    """The one golden key `<prefix><n>` and its n, e.g. ('spk_cond_latent_masked_len27', 27): GOLDEN.md names
    the masked goldens after the length they were computed with."""
    (key,) = [key for key in arrays if key.startswith(prefix) and key[len(prefix):].isdigit()]
    return key, int(key[len(prefix):])
