"""Text front-end of IndexTTS-2.5: the multilingual tiktoken tokenizer and the official text pipeline.

The official code (`indextts/infer_v2_5.py`, `indextts/utils/tokenizer.py`) turns (text, lang) into GPT
text tokens so:

1. the `clean_pattern` character map of the official TextNormalizer (full-width `，。` -> `,.` etc.);
2. optional normalisation (WeTextProcessing for zh/zhen/en, NeMo for ja/es);
3. `lower()` for ja/zh/zhen/en, `upper()` for es;
4. pronunciation annotations: `<word|PRON>` -> `<|SPECIAL_TOKEN_1|>PRON<|SPECIAL_TOKEN_1|>` (PRON
   upper-cased), SPECIAL_TOKEN_2 when the word has Han characters, ` PRON ` when PRON is kana;
5. ja: MeCab (fugashi + unidic-lite) word segmentation, words joined by spaces (the official G2P step
   with its ratio 0: no reading replaces a word);
6. every `<|tag|>` upper-cased;
7. `split_text_by_tokens` into segments of at most `max_text_tokens_per_segment` tokens;
8. per segment `encode('<|lang|> ' + segment, allowed_special='all') + [1]`; the GPT adds
   `lang_embedding(lang_to_token(lang))` to every text row.

The vocabulary is the checkpoint's `multilingual_zh_ja_yue_char_del.tiktoken` (lines of `base64(bytes)
rank`); the special tokens follow its ranks in the official order. Nothing is downloaded: tiktoken's own
registry (which fetches encodings) is never used; the Encoding is built from the file.

Differences from the official code, each deliberate and documented:
- `language="auto"`: the official code has no language detection (the caller must give `lang`); ours
  picks one from the script of the text (`detect_language`).
- Normalisation (step 2) runs only when a normaliser is given, and only for zh/zhen/en (the project's
  WeTextProcessing normaliser); NeMo (ja/es) is not available here, so ja/es text is not normalised.
  Every golden run used `text_normalization=False`.
- Official quirk kept: `lang='zhen'` is no special token, so its `<|zhen|>` prefix encodes as plain
  bytes, and `lang_to_token('zhen')` is the `common` row.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from indextts2.defaults import MAX_TEXT_TOKENS_PER_SEGMENT, SERVED_LANGUAGES_2_5

__all__ = [
    "LANGUAGES",
    "LANGUAGE_DICT",
    "SERVED_LANGUAGES",
    "PreparedText",
    "TextError25",
    "TextFrontend25",
    "apply_pronunciation_annotations",
    "clean_text",
    "detect_language",
    "lang_to_token",
    "load_encoding",
]

# The official LANGUAGES keys, in order (their index is the lang_embedding row): the 99 whisper
# languages, then yue, minnan, wuyu, dialect, zh/en, en/zh, common.
LANGUAGES: tuple[str, ...] = (
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it", "id",
    "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur", "hr", "bg",
    "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn", "et", "mk", "br",
    "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si", "km", "sn", "yo", "so",
    "af", "oc", "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo", "ht", "ps", "tk", "nn", "mt",
    "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln", "ha", "ba", "jw", "su", "yue", "minnan",
    "wuyu", "dialect", "zh/en", "en/zh", "common",
)
LANGUAGE_DICT: dict[str, int] = {lang: index for index, lang in enumerate(LANGUAGES)}
NUM_TOKENIZER_LANGUAGES = 99  # get_tokenizer(multilingual=True)'s num_languages
AUDIO_EVENTS = ("ASR", "AED", "SER", "Speech", "/Speech", "BGM", "/BGM", "Laughter", "/Laughter", "Applause",
                "/Applause")
EMOTIONS = ("HAPPY", "SAD", "ANGRY", "NEUTRAL")
TTS_TOKENS = ("TTS/B", "TTS/O", "TTS/Q", "TTS/A", "TTS/CO", "TTS/CL", "TTS/H",
              *(f"TTS/SP{i:02d}" for i in range(1, 14)))
# The official pre-tokenisation pattern (GPT-2's).
PAT_STR = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
STOP_TEXT_TOKEN = 1  # infer appends it to each segment (the GPT drops it again)
# Languages a request may name (the official web UI's choices); `auto` detects one of them.
SERVED_LANGUAGES: tuple[str, ...] = SERVED_LANGUAGES_2_5


class TextError25(ValueError):
    """Text that cannot be turned into IndexTTS-2.5 GPT text tokens."""


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------


def special_token_names(num_languages: int = NUM_TOKENIZER_LANGUAGES) -> list[str]:
    """The official special tokens, in id order after the mergeable ranks."""
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{lang}|>" for lang in LANGUAGES[:num_languages]],
        *[f"<|{event}|>" for event in AUDIO_EVENTS],
        *[f"<|{emotion}|>" for emotion in EMOTIONS],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
        *[f"<|SPECIAL_TOKEN_{i}|>" for i in range(1, 31)],
        *[f"<|{tts}|>" for tts in TTS_TOKENS],
        *[f"<|{i * 0.02:.2f}|>" for i in range(1501)],
    ]


def read_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """A `.tiktoken` file: one `base64(bytes) rank` per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tiktoken vocabulary not found: {path}")
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as error:
            raise TextError25(f"{path}:{number}: not a `base64 rank` line ({error})") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TextError25(f"{path}: ranks must be 0..{len(ranks) - 1}, each once")
    return ranks


@functools.cache
def load_encoding(path: str | Path, num_languages: int = NUM_TOKENIZER_LANGUAGES):  # -> tiktoken.Encoding
    """The official multilingual Encoding from the checkpoint's vocabulary file (no download)."""
    import tiktoken

    ranks = read_tiktoken_ranks(path)
    special = {name: len(ranks) + index for index, name in enumerate(special_token_names(num_languages))}
    return tiktoken.Encoding(
        name=Path(path).name,
        explicit_n_vocab=len(ranks) + len(special),
        pat_str=PAT_STR,
        mergeable_ranks=ranks,
        special_tokens=special,
    )


def lang_to_token(lang: str) -> int:
    """The official lang_embedding row of a language code; unknown codes (`zhen` too) are `common`."""
    lang = lang.lower()
    return LANGUAGE_DICT.get(lang, LANGUAGE_DICT["common"])


# --------------------------------------------------------------------------------------------------
# Text processing
# --------------------------------------------------------------------------------------------------

# The official TextNormalizer.char_rep_map (what infer's `clean_pattern` applies, in this order of
# alternatives: the regex tries them left to right).
CHAR_REP_MAP: dict[str, str] = {
    "：": ",", "；": ",", ";": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": " ", "·": "-", "、": ",",
    "...": "…", ",,,": "…", "，，，": "…", "……": "…", "“": "'", "”": "'", '"': "'", "‘": "'", "’": "'",
    "（": "'", "）": "'", "(": "'", ")": "'", "《": "'", "》": "'", "【": "'", "】": "'", "[": "'", "]": "'",
    "—": "-", "～": "-", "~": "-", "「": "'", "」": "'", ":": ",",
}
_CLEAN_PATTERN = re.compile("|".join(re.escape(key) for key in CHAR_REP_MAP))
PRONUNCIATION_ANNOTATION_PATTERN = re.compile(r"<([^|>\n]+)\|([^>\n]+)>")
_HIRAGANA = re.compile(r"^[\u3040-\u309F]+$")
_KATAKANA = re.compile(r"^[\u30A0-\u30FF]+$")
_HAN = re.compile(r"[\u4e00-\u9fff]")
_TAG = re.compile(r"<\|([^|]+)\|>")
SPLIT_PROTECTED_PATTERN = re.compile(r"<\|SPECIAL_TOKEN_\d+\|>.*?<\|SPECIAL_TOKEN_\d+\|>")
_SPLIT_AFTER = re.compile(r"(?<=[，。！？、；：,\.!\?;:\n])")


def clean_text(text: str) -> str:
    """Step 1: the official character map."""
    return _CLEAN_PATTERN.sub(lambda match: CHAR_REP_MAP[match.group()], text)


def is_kana(text: str) -> bool:
    return bool(_HIRAGANA.fullmatch(text) or _KATAKANA.fullmatch(text))


def apply_pronunciation_annotations(text: str) -> str:
    """Step 4: `<word|PRON>` -> PRON (upper-cased) wrapped in SPECIAL_TOKEN_1 (SPECIAL_TOKEN_2 if the
    word has Han characters), or ` PRON ` when PRON is kana."""

    def replace(match: re.Match[str]) -> str:
        word, pronunciation = match.group(1), match.group(2).upper()
        if is_kana(pronunciation):
            return f" {pronunciation} "
        token = "SPECIAL_TOKEN_2" if _HAN.search(word) else "SPECIAL_TOKEN_1"
        return f"<|{token}|>{pronunciation}<|{token}|>"

    return PRONUNCIATION_ANNOTATION_PATTERN.sub(replace, text)


def uppercase_tags(text: str) -> str:
    """Step 6: every `<|tag|>` upper-cased."""
    return _TAG.sub(lambda match: f"<|{match.group(1).upper()}|>", text)


@functools.cache
def _mecab_tagger():
    try:
        import fugashi
    except ImportError as error:  # pragma: no cover - fugashi is a main dependency
        raise TextError25("Japanese text needs fugashi and unidic-lite (pip install fugashi unidic-lite)") from error
    return fugashi.Tagger()


def segment_japanese(text: str) -> str:
    """Step 5 (the official JapaneseG2PProcessor with g2p_ratio=0): each space-free run is split into
    MeCab words joined by single spaces; the original runs of spaces are kept."""
    tagger = _mecab_tagger()
    parts = re.split(r"( +)", text)
    return "".join(" ".join(word.surface for word in tagger(part)) if part.strip() else part for part in parts)


_KANA_CHARS = re.compile(r"[\u3040-\u30FF]")
_ARABIC_CHARS = re.compile(r"[\u0600-\u06FF]")
_SPANISH_MARKS = re.compile(r"[ñÑ¿¡áéíóúÁÉÍÓÚüÜ]")
_LATIN_LETTERS = re.compile(r"[A-Za-z]")


def detect_language(text: str) -> str:
    """Our `auto` rule (the official code has none): kana -> ja; Han characters -> zh; Arabic script
    -> ar; Spanish-only letters or marks (ñ ¿ ¡ and accented vowels) -> es; otherwise en."""
    text = PRONUNCIATION_ANNOTATION_PATTERN.sub(lambda match: match.group(1), text)
    if _KANA_CHARS.search(text):
        return "ja"
    if _HAN.search(text):
        return "zh"
    if _ARABIC_CHARS.search(text):
        return "ar"
    if _SPANISH_MARKS.search(text):
        return "es"
    return "en"


@dataclass
class PreparedText:
    """A request's text as the GPT takes it."""

    language: str  # the language code used (after `auto`)
    language_id: int  # its lang_embedding row
    text: str  # after steps 1-6
    segment_texts: list[str] = field(default_factory=list)
    segments: list[list[int]] = field(default_factory=list)  # per segment: '<|lang|> ' + text ids, then 1


class TextFrontend25:
    """The 2.5 tokenizer (from the checkpoint's `.tiktoken` file) and the official text pipeline.

    `max_text_tokens`: the GPT's `max_text_tokens` (config.yaml gpt section): the split budget never
    exceeds what its text position table holds. `normalizer`: a callable for zh/zhen/en text (step 2);
    None skips normalisation, as `text_normalization=False` does.
    """

    def __init__(
        self,
        tiktoken_path: str | Path,
        max_text_tokens: int = MAX_TEXT_TOKENS_PER_SEGMENT,
        normalizer: Callable[[str], str] | None = None,
        num_languages: int = NUM_TOKENIZER_LANGUAGES,
    ) -> None:
        self.tiktoken_path = Path(tiktoken_path)
        self.encoding = load_encoding(self.tiktoken_path, num_languages)
        self.max_text_tokens = int(max_text_tokens)
        self.normalizer = normalizer

    @property
    def n_vocab(self) -> int:
        return self.encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, special tokens (`<|...|>`) allowed, as the official call."""
        return self.encoding.encode(text, allowed_special="all")

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)

    def token_id(self, special: str) -> int:
        return self.encoding.encode_single_token(special)

    # --- steps 1-6 ------------------------------------------------------------------------------

    def process(self, text: str, lang: str) -> str:
        """Steps 1 to 6 for language code `lang` (as given to the official infer)."""
        lang = lang.lower()
        text = clean_text(text)
        if self.normalizer is not None and lang in ("zh", "zhen", "en"):
            text = self.normalizer(text)
        if lang in ("ja", "zh", "zhen", "en"):
            text = text.lower()
        elif lang == "es":
            text = text.upper()
        text = apply_pronunciation_annotations(text)
        if lang == "ja":
            text = segment_japanese(text)
        return uppercase_tags(text)

    # --- step 7 ---------------------------------------------------------------------------------

    def _token_len(self, text: str) -> int:
        return len(self.encode(text))

    @staticmethod
    def _atomic_pieces(text: str) -> list[tuple[str, bool]]:
        pieces, position = [], 0
        for match in SPLIT_PROTECTED_PATTERN.finditer(text):
            if match.start() > position:
                pieces.append((text[position:match.start()], False))
            pieces.append((match.group(0), True))
            position = match.end()
        if position < len(text):
            pieces.append((text[position:], False))
        return pieces

    def split(self, text: str, max_tokens: int, lang_prefix: str = "") -> list[str]:
        """The official `split_text_by_tokens`: segments within min(max_tokens, max_text_tokens) tokens
        with the language prefix; annotated pronunciations are never cut; cuts after punctuation, else
        between characters."""
        budget = max(1, min(max_tokens, self.max_text_tokens) - self._token_len(lang_prefix))
        if self._token_len(text) <= budget:
            return [text]
        chunks: list[str] = []
        for piece, atomic in self._atomic_pieces(text):
            if atomic:
                chunks.append(piece)
                continue
            for part in _SPLIT_AFTER.split(piece):
                if not part:
                    continue
                if self._token_len(part) <= budget:
                    chunks.append(part)
                else:
                    chunks.extend(self._pack(part, budget))  # cut between characters
        return self._pack(chunks, budget) or [text]

    def _pack(self, pieces: Iterable[str], budget: int) -> list[str]:
        """Consecutive pieces joined greedily into strings of at most `budget` tokens (a piece over the
        budget on its own stays whole)."""
        packed, current = [], ""
        for piece in pieces:
            if current and self._token_len(current + piece) > budget:
                packed.append(current)
                current = piece
            else:
                current += piece
        if current:
            packed.append(current)
        return packed

    # --- the whole pipeline ---------------------------------------------------------------------

    def prepare(
        self, text: str, language: str = "auto", max_tokens: int = MAX_TEXT_TOKENS_PER_SEGMENT
    ) -> PreparedText:
        """Text + request language (`auto` or one of SERVED_LANGUAGES) -> GPT text ids per segment."""
        language = language.lower()
        if language == "auto":
            language = detect_language(text)
        if language not in SERVED_LANGUAGES:
            raise TextError25(f"language {language!r} is not supported (auto, {', '.join(SERVED_LANGUAGES)})")
        processed = self.process(text, language)
        if not any(char.isalnum() for char in _TAG.sub("", processed)):
            raise TextError25(f"text has nothing to speak: {text!r}")
        return self.prepare_processed(processed, language, max_tokens)

    def prepare_processed(self, processed: str, lang: str, max_tokens: int) -> PreparedText:
        """Steps 7-8 on processed text, for any official language code (`zhen` included)."""
        prefix = f"<|{lang.lower()}|> "
        segment_texts = self.split(processed, max_tokens, prefix)
        segments = [self.encode(prefix + segment) + [STOP_TEXT_TOKEN] for segment in segment_texts]
        return PreparedText(lang.lower(), lang_to_token(lang), processed, segment_texts, segments)
