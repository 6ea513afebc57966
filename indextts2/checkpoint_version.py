"""Which IndexTTS version a checkpoint directory holds, read from its config and file names only: the
orchestrator asks this without loading (or importing) any network."""

from __future__ import annotations

from pathlib import Path

from indextts2.checkpoint import CheckpointError
from indextts2.config import load_config

VERSION_2_0 = "2.0"
VERSION_2_5 = "2.5"
# IndexTTS-2.5 file names that the official code hard-codes (not named in config.yaml).
CODEC_2_5_FILE = "codec.pth"
TIKTOKEN_2_5_FILE = "multilingual_zh_ja_yue_char_del.tiktoken"


def detect_version(model_dir: str | Path) -> str:
    """'2.0' or '2.5' for an official checkpoint directory.

    config.yaml's `version` decides where present (the official configs carry one); otherwise the
    files do: IndexTTS-2.5's fixed `codec.pth` or `.tiktoken` vocabulary make it 2.5. Any other
    version is refused rather than served by the wrong networks.
    """
    model_dir = Path(model_dir)
    config_path = model_dir / "config.yaml"
    if not config_path.is_file():
        raise CheckpointError(f"{model_dir} is not an IndexTTS-2 checkpoint directory: it has no config.yaml")
    version = load_config(config_path).get("version")
    if version is None:
        has_2_5_files = (model_dir / CODEC_2_5_FILE).is_file() or (model_dir / TIKTOKEN_2_5_FILE).is_file()
        return VERSION_2_5 if has_2_5_files else VERSION_2_0
    text = str(version).strip()
    if text in ("2", "2.0"):
        return VERSION_2_0
    if text == "2.5":
        return VERSION_2_5
    raise CheckpointError(f"{config_path}: version {version!r} is not supported (IndexTTS 2.0 and 2.5 are)")
