"""Reading the golden .npz files (see ../shared/golden/indextts2-tiny/GOLDEN.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_golden(golden_dir: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(golden_dir / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}
