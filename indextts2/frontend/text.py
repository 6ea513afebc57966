"""Text front-end of IndexTTS-2: normalisation, SentencePiece tokenisation and segment splitting.

As the official front-end (indextts/utils/front.py) does: the text normaliser (normalizer.py: the
official WeTextProcessing grammars and the official rules around them) spells out numbers and maps
punctuation; `split_cjk` puts spaces around CJK characters and upper-cases everything else; the
SentencePiece `bpe.model` encodes the result; `split_pieces` cuts the pieces into GPT-sized segments.

`split_pieces` follows the official `split_segments_by_token` rules; see its docstring for the two
places where we knowingly differ. One more deliberate difference: the official `encode` skips
normalisation when the stripped text is a single character (so "a" stayed lower-case and "。" unmapped);
we always normalise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from indextts2.defaults import MAX_TEXT_TOKENS_PER_SEGMENT
from indextts2.frontend.normalizer import TextNormalizer, load_normalizer

__all__ = [
    "TextError",
    "TextFrontend",
    "normalize_text",
    "split_cjk",
    "split_pieces",
]

START_TEXT_TOKEN = 0  # gpt.start_text_token: the bpe.model's <s>
STOP_TEXT_TOKEN = 1  # gpt.stop_text_token: the bpe.model's </s>


class TextError(ValueError):
    """Text that cannot be turned into GPT text tokens, or a bpe.model the GPT cannot use."""


# --------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------

# Ranges that tokenize_by_CJK_char puts spaces around (Hangul Jamo, CJK radicals .. Yi, Hangul
# syllables, compatibility ideographs, vertical forms, half-width forms, CJK extension B+).
CJK_RANGE_PATTERN = (
    r"([\u1100-\u11ff\u2e80-\ua4cf\ua840-\uD7AF\uF900-\uFAFF\uFE30-\uFE4F\uFF65-\uFFDC"
    r"\U00020000-\U0002FFFF])"
)
_CJK = re.compile(CJK_RANGE_PATTERN)


def split_cjk(text: str) -> str:
    """Official tokenize_by_CJK_char: a space around every CJK character, everything else upper-cased."""
    parts = _CJK.split(text.strip())
    return " ".join(part.strip().upper() for part in parts if part.strip())


def normalize_text(text: str, normalizer: TextNormalizer | None = None) -> str:
    """The exact string the official pipeline hands to SentencePiece: the official normaliser's output
    (`normalizer`, default the process's shared one), CJK split and upper-cased. May return ""."""
    normalizer = normalizer if normalizer is not None else load_normalizer()
    return split_cjk(normalizer.normalize(text))


# --------------------------------------------------------------------------------------------------
# Segment splitting (on SentencePiece pieces, as the official code does)
# --------------------------------------------------------------------------------------------------

# Pieces that end a sentence. Official list plus "▁!", which the official bpe.model lacks (there " !"
# encodes as "▁" + "!" and still splits) but a smaller vocabulary may have.
SENTENCE_END_PIECES = frozenset({".", "!", "?", "▁.", "▁?", "▁...", "▁!"})
CLAUSE_END_PIECES = frozenset({",", "▁,", "-"})
QUOTE_PIECES = frozenset({"'", "▁'"})


def split_pieces(
    pieces: Sequence[str], max_tokens: int = MAX_TEXT_TOKENS_PER_SEGMENT, quick_streaming_tokens: int = 0,
    first_segment_tokens: int = 0,
) -> list[list[str]]:
    """Official TextTokenizer.split_segments rules, flattened.

    1. Cut the piece stream into atoms: after every "," / "▁," / "-" piece; after a sentence-end piece
       once the atom holds more than 2 pieces (a quote right after it stays with that sentence); and
       when an atom reaches max_tokens + 1 pieces, into max_tokens pieces and the 1 piece left over.
    2. Greedily join neighbouring atoms while the joined segment stays within max_tokens and more than
       quick_streaming_tokens pieces have been seen so far (or while it stays within max_tokens / 2).

    first_segment_tokens > 0 (ours, for streaming): the first segment takes no more atoms once it holds
    that many pieces, so it ends at the first punctuation break from there; the rest is joined as above.

    Differences from the official code, both deliberate: the quote after a sentence end is kept once
    (the official loop appends it to the closed segment and again to the next one), and it is kept only
    if the segment has room for it (the official code could then exceed max_tokens).
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    atoms: list[list[str]] = []
    current: list[str] = []
    index = 0
    while index < len(pieces):
        piece = pieces[index]
        index += 1
        current.append(piece)
        if len(current) > max_tokens:
            atoms += [current[:max_tokens], current[max_tokens:]]
            current = []
        elif piece in CLAUSE_END_PIECES:
            atoms.append(current)
            current = []
        elif piece in SENTENCE_END_PIECES and len(current) > 2:
            if index < len(pieces) and pieces[index] in QUOTE_PIECES and len(current) < max_tokens:
                current.append(pieces[index])
                index += 1
            atoms.append(current)
            current = []
    if current:
        atoms.append(current)

    segments: list[list[str]] = []
    seen = 0
    for atom in atoms:
        seen += len(atom)
        if not segments:
            segments.append(list(atom))
            continue
        joined = len(segments[-1]) + len(atom)
        first_is_long_enough = len(segments) == 1 and 0 < first_segment_tokens <= len(segments[0])
        if first_is_long_enough:
            segments.append(list(atom))
        elif (joined <= max_tokens and seen > quick_streaming_tokens) or joined <= max_tokens / 2:
            segments[-1] += atom
        else:
            segments.append(list(atom))
    return segments


# --------------------------------------------------------------------------------------------------
# Front-end
# --------------------------------------------------------------------------------------------------


class TextFrontend:
    """Normalise text, encode it with a SentencePiece bpe.model and cut it into GPT-sized segments."""

    def __init__(self, bpe_model_path: str | Path, normalizer: TextNormalizer | None = None) -> None:
        """`normalizer` defaults to the process's shared one (`load_normalizer()`: its FSTs are loaded
        here, at start-up, never per request)."""
        path = Path(bpe_model_path)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {path}")
        self.bpe_model_path = path
        self.normalizer = normalizer if normalizer is not None else load_normalizer()
        self._sp = spm.SentencePieceProcessor(model_file=str(path))
        # The GPT wraps every segment in start/stop text tokens 0 and 1 and drops those ids from the
        # text, so no ordinary piece may own them.
        for token_id in (START_TEXT_TOKEN, STOP_TEXT_TOKEN):
            if token_id >= self._sp.get_piece_size() or not self._sp.is_control(token_id):
                raise TextError(
                    f"{path}: id {token_id} must be a control piece (<s>/</s>) because the GPT uses ids "
                    f"{START_TEXT_TOKEN}/{STOP_TEXT_TOKEN} as start/stop text tokens"
                )

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    def normalize(self, text: str) -> str:
        """The normalised string given to SentencePiece; TextError when no letter, digit or CJK is left."""
        normalized = normalize_text(text, self.normalizer)
        # Punctuation alone ("。！", "...") gives the GPT nothing to read.
        if not any(char.isalnum() for char in normalized):
            raise TextError(f"text has nothing to speak after normalisation: {text!r}")
        return normalized

    def pieces(self, text: str) -> list[str]:
        return self._sp.encode(self.normalize(text), out_type=str)

    def encode(self, text: str) -> list[int]:
        """Normalised text as bpe ids, without start/stop text tokens (the GPT adds those)."""
        return self._pieces_to_ids(self.pieces(text))

    def decode(self, ids: Iterable[int]) -> str:
        """The normalised text back from ids (CJK characters stay space-separated)."""
        return self._sp.decode(list(ids))

    def unknown_characters(self, text: str) -> list[str]:
        """Pieces of the text that the bpe.model maps to <unk> (the official code only warns about them)."""
        pieces = self.pieces(text)
        return [
            piece for piece, token_id in zip(pieces, self._pieces_to_ids(pieces), strict=False) if token_id == self.unk_id
        ]

    def split_segments(
        self, text: str, max_tokens: int = MAX_TEXT_TOKENS_PER_SEGMENT, quick_streaming_tokens: int = 0,
        first_segment_tokens: int = 0,
    ) -> list[list[int]]:
        """Ids of the text cut into segments of at most max_tokens, in order, covering all of it."""
        segments = split_pieces(self.pieces(text), max_tokens, quick_streaming_tokens, first_segment_tokens)
        return [self._pieces_to_ids(segment) for segment in segments]

    def _pieces_to_ids(self, pieces: list[str]) -> list[int]:
        # Pieces the model lacks (unknown characters) come back as unk_id, as in the official code.
        return [self._sp.piece_to_id(piece) for piece in pieces]
