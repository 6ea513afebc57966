"""The official `config.yaml`, read as plain nested dicts.

The official code reads it with OmegaConf; the file is plain YAML, so `yaml.safe_load` reads the
same values without the extra dependency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def load_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with path.open() as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise TypeError(f"{path}: expected a YAML mapping at the top level")
    return config
