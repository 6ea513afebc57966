"""What the orchestrator reads from the checkpoint directory: four small files, no weights.

- config.yaml: the emotion groups (`emo_num`), the GPT's limits (text positions, longest code
  sequence, stop code, width) and the s2mel mel parameters for the reference mel;
- the text front-end: bpe.model for IndexTTS-2.0 (normalise, SentencePiece, split into segments), the
  `.tiktoken` vocabulary for IndexTTS-2.5 (languages, special tokens, pronunciation annotations);
- feat1.pt / feat2.pt: the emotion bank that an 8-weight emotion vector selects from.

The version (2.0 or 2.5) is the directory's (`indextts2.checkpoint_dir.detect_version`); it picks the
text front-end and the pipeline's conditioning and s2mel inputs.

The same files sit in every official checkpoint directory and in the demo preset, so the service
points at the directory the model repository was exported from (setting CHECKPOINT_DIR).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indextts2 import defaults
from indextts2.checkpoint import CheckpointError
from indextts2.checkpoint_version import TIKTOKEN_2_5_FILE, VERSION_2_5, detect_version
from indextts2.config import load_config
from indextts2.emotion import EmotionBank, load_emotion_bank
from indextts2.frontend.audio import s2mel_mel_args
from indextts2.frontend.text import TextError, TextFrontend
from indextts2.frontend.text_2_5 import TextError25, TextFrontend25
from orchestrator.settings import SettingsError


@dataclass(frozen=True)
class ModelAssets:
    checkpoint_dir: Path
    config: dict[str, Any]
    text_frontend: TextFrontend | TextFrontend25
    emotion_bank: EmotionBank
    mel_args: dict[str, Any]
    version: str = "2.0"  # "2.0" or "2.5"

    @property
    def is_2_5(self) -> bool:
        return self.version == VERSION_2_5

    @property
    def gpt_dim(self) -> int:
        return int(self.config["gpt"]["model_dim"])

    @property
    def max_codes_limit(self) -> int:
        """The longest code sequence the GPT's position table allows (as EagerPipeline clamps it)."""
        return int(self.config["gpt"]["max_mel_tokens"]) - 1

    @property
    def default_max_codes(self) -> int:
        return min(defaults.MAX_CODES, self.max_codes_limit)

    @property
    def max_text_tokens(self) -> int:
        return int(self.config["gpt"]["max_text_tokens"])

    def segment_tokens(self, requested: int) -> int:
        """The most text tokens in one segment: `requested` (MAX_TEXT_TOKENS_PER_SEGMENT), capped so that a
        segment fits the GPT's text positions."""
        return min(requested, self.max_text_tokens)

    def text_segments(self, text: str, max_tokens: int, language: str | None,
                      first_segment_tokens: int = 0) -> list[list[int]]:
        """Text -> token ids per segment of at most `max_tokens`: IndexTTS-2.0's BPE front-end
        (first_segment_tokens: a short first segment, see `split_pieces`), or 2.5's in `language` (a
        language code, or 'auto'/None to detect it). Raises TextError / TextError25 when nothing is left to
        speak."""
        if self.is_2_5:
            return self.text_frontend.prepare(text, language or "auto", max_tokens).segments
        return self.text_frontend.split_segments(text, max_tokens, 0, first_segment_tokens)

    @classmethod
    def load(cls, checkpoint_dir: str | Path) -> ModelAssets:
        """Raises SettingsError naming the directory and the file when something is missing."""
        checkpoint_dir = Path(checkpoint_dir)
        config_path = checkpoint_dir / "config.yaml"
        if not config_path.is_file():
            raise SettingsError(
                f"CHECKPOINT_DIR={checkpoint_dir} is not an IndexTTS-2 checkpoint directory: no config.yaml"
            )
        try:
            version = detect_version(checkpoint_dir)
            config = load_config(config_path)
            if version == VERSION_2_5:
                from indextts2.frontend.normalizer import load_normalizer

                text_frontend = TextFrontend25(
                    checkpoint_dir / TIKTOKEN_2_5_FILE, max_text_tokens=int(config["gpt"]["max_text_tokens"]),
                    normalizer=load_normalizer().normalize,
                )
            else:
                bpe = checkpoint_dir / str(config.get("dataset", {}).get("bpe_model", "bpe.model"))
                text_frontend = TextFrontend(bpe)
            bank = load_emotion_bank(
                checkpoint_dir / str(config["spk_matrix"]), checkpoint_dir / str(config["emo_matrix"]),
                config["emo_num"],
            )
            mel_args = s2mel_mel_args(config["s2mel"])
            int(config["gpt"]["model_dim"]), int(config["gpt"]["max_mel_tokens"])
        except (OSError, KeyError, TypeError, ValueError, CheckpointError, TextError, TextError25) as error:
            raise SettingsError(f"CHECKPOINT_DIR={checkpoint_dir}: {type(error).__name__}: {error}") from error
        return cls(checkpoint_dir, config, text_frontend, bank, mel_args, version)
