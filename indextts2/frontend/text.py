"""Text front-end of IndexTTS-2: normalisation, SentencePiece tokenisation and segment splitting.

The official front-end (indextts/utils/front.py) runs WeTextProcessing, maps punctuation to a small
set, splits CJK characters apart, upper-cases everything else and encodes with the SentencePiece
`bpe.model`. WeTextProcessing is not available here, so `normalize_text` is our own plain, deterministic
normaliser. What it keeps from the official code: the language decision (`use_chinese`), the
contraction rule, pinyin-with-tone protection and its j/q/x + u -> v correction, the punctuation map,
and the CJK split with upper-casing. What it does itself: Unicode NFKC, whitespace collapsing, and
numbers spelt out (Chinese readings when the text takes the Chinese rules, English words otherwise),
because the official model was trained on text whose numbers had already been spelt out by the
WeTextProcessing normalisers.

`split_pieces` follows the official `split_segments_by_token` rules; see its docstring for the two
places where we knowingly differ. One more deliberate difference: the official `encode` skips
normalisation when the stripped text is a single character (so "a" stayed lower-case and "。" unmapped);
we always normalise.
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

__all__ = [
    "DEMO_CORPUS",
    "TextError",
    "TextFrontend",
    "normalize_text",
    "split_cjk",
    "split_pieces",
    "train_demo_bpe",
]

MAX_TEXT_TOKENS_PER_SEGMENT = 120  # infer_v2.py default for max_text_tokens_per_segment
START_TEXT_TOKEN = 0  # gpt.start_text_token: the bpe.model's <s>
STOP_TEXT_TOKEN = 1  # gpt.stop_text_token: the bpe.model's </s>


class TextError(ValueError):
    """Text that cannot be turned into GPT text tokens, or a bpe.model the GPT cannot use."""


# --------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------

# Official punctuation map (TextNormalizer.char_rep_map), applied in one left-to-right pass with the
# keys tried in this order, so the order matters. Several keys are full-width forms that NFKC has
# already folded before the map runs; they stay so that the map reads as the official one.
PUNCTUATION_MAP: dict[str, str] = {
    "：": ",",
    "；": ",",
    ";": ",",
    "，": ",",
    "。": ".",
    "！": "!",
    "？": "?",
    "\n": " ",
    "·": "-",
    "、": ",",
    "...": "…",
    ",,,": "…",
    "，，，": "…",
    "……": "…",
    "“": "'",
    "”": "'",
    '"': "'",
    "‘": "'",
    "’": "'",
    "（": "'",
    "）": "'",
    "(": "'",
    ")": "'",
    "《": "'",
    "》": "'",
    "【": "'",
    "】": "'",
    "[": "'",
    "]": "'",
    "—": "-",
    "～": "-",
    "~": "-",
    "「": "'",
    "」": "'",
    ":": ",",
}
# Text under the Chinese rules also maps a leftover "$" to "." (official zh_char_rep_map).
CHINESE_PUNCTUATION_MAP: dict[str, str] = {"$": ".", **PUNCTUATION_MAP}

_PUNCTUATION_PATTERN = re.compile("|".join(re.escape(key) for key in PUNCTUATION_MAP))
_CHINESE_PUNCTUATION_PATTERN = re.compile("|".join(re.escape(key) for key in CHINESE_PUNCTUATION_MAP))

# Pinyin syllable with a tone digit 1-5 (5 = neutral tone), e.g. xuan4, jve2, shang5; the look-behind
# keeps words like beta1 or voice2 out. Official TextNormalizer.PINYIN_TONE_PATTERN.
PINYIN_TONE_PATTERN = (
    r"(?<![a-z])((?:[bpmfdtnlgkhjqxzcsryw]|[zcs]h)?(?:[aeiouüv]|[ae]i|u[aio]|ao|ou|i[aue]|[uüv]e|"
    r"[uvü]ang?|uai|[aeiuv]n|[aeio]ng|ia[no]|i[ao]ng)|ng|er)([1-5])"
)
_PINYIN = re.compile(PINYIN_TONE_PATTERN, re.IGNORECASE)

# Ranges that tokenize_by_CJK_char puts spaces around (Hangul Jamo, CJK radicals .. Yi, Hangul
# syllables, compatibility ideographs, vertical forms, half-width forms, CJK extension B+).
CJK_RANGE_PATTERN = (
    r"([\u1100-\u11ff\u2e80-\ua4cf\ua840-\uD7AF\uF900-\uFAFF\uFE30-\uFE4F\uFF65-\uFFDC"
    r"\U00020000-\U0002FFFF])"
)
_CJK = re.compile(CJK_RANGE_PATTERN)

_HAN = re.compile(r"[\u4e00-\u9fff]")
_LATIN = re.compile(r"[a-zA-Z]")
_EMAIL = re.compile(r"^[a-zA-Z0-9]+@[a-zA-Z0-9]+\.[a-zA-Z]+$")
# "it's" -> "it is" for a few common words only; the word boundary is ours (the official pattern also
# rewrote "bit's" to "bit is"), and the curly apostrophe is accepted because we run before the map.
_CONTRACTION = re.compile(r"\b(what|where|who|which|how|t?here|it|s?he|that|this)['’]s\b", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
# Runs of dots or ellipses read as one pause; NFKC turns "…" into "...", so "……" arrives as six dots.
_ELLIPSIS_RUN = re.compile(r"(?:\.{3,}|…)(?:\.{3,}|…)*")

_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
# One scan over the text, so a pinyin tone digit is consumed before the number rule can see it.
_SPAN = re.compile(
    rf"(?P<pinyin>{PINYIN_TONE_PATTERN})"
    r"|(?P<date>(?<![\d.])(?P<year>\d{4})(?P<sep>[/.-])(?P<month>0?[1-9]|1[0-2])(?P=sep)"
    r"(?P<day>0?[1-9]|[12]\d|3[01])(?![\d.]))"
    rf"|(?P<time>(?<![\d.])(?:[01]?\d|2[0-3]):[0-5]\d(?![\d:]))"
    rf"|(?P<currency>[$¥])(?P<amount>{_NUMBER})"
    rf"|(?P<number>{_NUMBER})(?:(?P<percent>%)|(?P<ordinal>st|nd|rd|th)\b)?",
    re.IGNORECASE,
)
# Longer integers (phone numbers, ids) and zero-padded ones ("007") are read digit by digit.
_MAX_CARDINAL_DIGITS = 9

_ZH_DIGITS = "零一二三四五六七八九"
_ZH_GROUP_UNITS = ("", "万", "亿")
_EN_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)  # fmt: skip
_EN_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_EN_SCALES = ("", "thousand", "million")
_EN_MONTHS = (
    "", "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
# An English number gets a space before it unless it follows a space, a hyphen or an opening mark.
_NO_SPACE_BEFORE = frozenset(" -/([{'\"‘“")
_EN_ORDINAL_EXCEPTIONS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}


def uses_chinese_rules(text: str) -> bool:
    """Official TextNormalizer.use_chinese: Han characters, no Latin letters, an e-mail, or pinyin."""
    if _HAN.search(text) or not _LATIN.search(text) or _EMAIL.match(text):
        return True
    return _PINYIN.search(text) is not None


def correct_pinyin(syllable: str) -> str:
    """j/q/x followed by u or ü is written with v, as the bpe.model's pinyin pieces are (ju4 -> jv4)."""
    if syllable[0] not in "jqxJQX":
        return syllable
    return re.sub(r"([jqx])[uü](n|e|an)*(\d)", r"\g<1>v\g<2>\g<3>", syllable, flags=re.IGNORECASE)


def _chinese_below_10000(value: int) -> str:
    out = ""
    gap = False
    for place, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        digit, value = divmod(value, place)
        if digit:
            out += ("零" if gap else "") + _ZH_DIGITS[digit] + unit
            gap = False
        elif out:
            gap = True
    return out


def chinese_integer(digits: str) -> str:
    """Chinese reading of an integer below 10**12: 1005 -> 一千零五, 15 -> 十五, 20000 -> 二万."""
    value = int(digits)
    if value == 0:
        return "零"
    groups = []
    while value:
        value, group = divmod(value, 10000)
        groups.append(group)
    out = ""
    gap = False
    for index in reversed(range(len(groups))):
        group = groups[index]
        if group == 0:
            gap = bool(out)
            continue
        if out and (gap or group < 1000):
            out += "零"
        out += _chinese_below_10000(group) + _ZH_GROUP_UNITS[index]
        gap = False
    # 10-19 at the head are read 十, 十一, ... rather than 一十, 一十一.
    return out[1:] if out.startswith("一十") else out


def _english_below_1000(value: int) -> list[str]:
    words = []
    hundreds, rest = divmod(value, 100)
    if hundreds:
        words += [_EN_ONES[hundreds], "hundred"]
        if rest:
            words.append("and")
    if rest >= 20:
        words.append(_EN_TENS[rest // 10])
        if rest % 10:
            words.append(_EN_ONES[rest % 10])
    elif rest:
        words.append(_EN_ONES[rest])
    return words


def english_integer(digits: str) -> str:
    """English words for an integer below 10**9; hyphen-free ("twenty one") because "-" splits segments."""
    value = int(digits)
    if value == 0:
        return "zero"
    groups: list[list[str]] = []
    scale = 0
    while value:
        value, group = divmod(value, 1000)
        if group:
            groups.append(_english_below_1000(group) + ([_EN_SCALES[scale]] if scale else []))
        scale += 1
    return " ".join(word for group in reversed(groups) for word in group)


def english_ordinal(digits: str) -> str:
    words = english_integer(digits).split(" ")
    last = words[-1]
    if last in _EN_ORDINAL_EXCEPTIONS:
        words[-1] = _EN_ORDINAL_EXCEPTIONS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def _read_digits(digits: str, chinese: bool) -> str:
    if chinese:
        return "".join(_ZH_DIGITS[int(d)] for d in digits)
    return " ".join(_EN_ONES[int(d)] for d in digits)


def _read_number(number: str, chinese: bool, digit_by_digit: bool = False) -> str:
    integer, _, fraction = number.replace(",", "").partition(".")
    if digit_by_digit or len(integer) > _MAX_CARDINAL_DIGITS or (len(integer) > 2 and integer[0] == "0"):
        spoken = _read_digits(integer, chinese)
    else:
        spoken = chinese_integer(integer) if chinese else english_integer(integer)
    if fraction:
        point = "点" if chinese else " point "
        spoken += point + _read_digits(fraction, chinese)
    return spoken


def _read_time(clock: str, chinese: bool) -> str:
    hours, minutes = clock.split(":")
    if chinese:
        spoken = chinese_integer(hours) + "点"
        if minutes != "00":
            spoken += ("零" if minutes[0] == "0" else "") + chinese_integer(minutes) + "分"
        return spoken
    if minutes == "00":
        return english_integer(hours) + " o'clock"
    if minutes[0] == "0":
        return english_integer(hours) + " oh " + english_integer(minutes)
    return english_integer(hours) + " " + english_integer(minutes)


def _spell_span(match: re.Match[str], chinese: bool) -> str:
    if match.group("pinyin"):
        return correct_pinyin(match.group("pinyin"))
    if match.group("date"):
        year, month, day = match.group("year"), match.group("month"), match.group("day")
        if chinese:
            spoken = (
                _read_digits(year, True) + "年" + chinese_integer(month) + "月" + chinese_integer(day) + "日"
            )
        else:
            spoken = f"{_EN_MONTHS[int(month)]} {english_ordinal(day)} {english_integer(year)}"
    elif match.group("time"):
        spoken = _read_time(match.group("time"), chinese)
    elif match.group("currency"):
        amount = _read_number(match.group("amount"), chinese)
        if chinese:
            spoken = amount + ("美元" if match.group("currency") == "$" else "元")
        elif match.group("currency") == "¥":
            spoken = amount + " yuan"
        else:
            dollars, _, cents = match.group("amount").replace(",", "").partition(".")
            if len(cents) == 2:
                spoken = _read_number(dollars, False) + (" dollar" if dollars == "1" else " dollars")
                if cents != "00":
                    spoken += " and " + english_integer(cents) + (" cent" if cents == "01" else " cents")
            else:
                spoken = amount + (" dollar" if match.group("amount") == "1" else " dollars")
    else:
        number = match.group("number")
        text = match.string
        if match.group("percent"):
            spoken = (
                "百分之" + _read_number(number, True) if chinese else _read_number(number, False) + " percent"
            )
        elif (
            match.group("ordinal")
            and not chinese
            and number.isdigit()
            and len(number) <= _MAX_CARDINAL_DIGITS
        ):
            spoken = english_ordinal(number)
        else:
            # A four-digit year is read digit by digit in Chinese: 2002年 -> 二零零二年.
            is_year = (
                chinese
                and len(number) == 4
                and number.isdigit()
                and text[match.end() : match.end() + 1] == "年"
            )
            spoken = _read_number(number, chinese, digit_by_digit=is_year)
    if chinese:
        return spoken
    # English words must not glue onto their neighbours: F5 -> F five, 5G -> five G, "!5" -> "! five".
    before = match.string[match.start() - 1 : match.start()]
    after = match.string[match.end() : match.end() + 1]
    return (
        (" " if before and before not in _NO_SPACE_BEFORE else "") + spoken + (" " if after.isalnum() else "")
    )


def split_cjk(text: str) -> str:
    """Official tokenize_by_CJK_char: a space around every CJK character, everything else upper-cased."""
    parts = _CJK.split(text.strip())
    return " ".join(part.strip().upper() for part in parts if part.strip())


def normalize_text(text: str) -> str:
    """The exact string the official pipeline hands to SentencePiece, minus WeTextProcessing.

    Steps: NFKC and whitespace collapsing; pick Chinese or English rules as the official code does;
    expand "it's"-style contractions; spell out numbers, times, percentages and currency amounts while
    keeping pinyin tone digits (xuan4) as they are; map punctuation with the official table; merge runs
    of ellipses; split CJK characters apart and upper-case the rest. May return "" (no content).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    # A Chinese comma must not read as a thousands separator once NFKC folds it to ","; "、" maps to ","
    # as well, so the output is unchanged.
    text = unicodedata.normalize("NFKC", text.replace("，", "、"))
    text = _WHITESPACE.sub(" ", text).strip()
    chinese = uses_chinese_rules(text)
    text = _CONTRACTION.sub(r"\1 is", text)
    text = _SPAN.sub(lambda match: _spell_span(match, chinese), text)
    pattern, table = (
        (_CHINESE_PUNCTUATION_PATTERN, CHINESE_PUNCTUATION_MAP)
        if chinese
        else (_PUNCTUATION_PATTERN, PUNCTUATION_MAP)
    )
    text = pattern.sub(lambda match: table[match.group()], text)
    text = _ELLIPSIS_RUN.sub("…", text)
    text = _WHITESPACE.sub(" ", text)
    return split_cjk(text)


# --------------------------------------------------------------------------------------------------
# Segment splitting (on SentencePiece pieces, as the official code does)
# --------------------------------------------------------------------------------------------------

# Pieces that end a sentence. Official list plus "▁!", which the official bpe.model lacks (there " !"
# encodes as "▁" + "!" and still splits) but a smaller vocabulary may have.
SENTENCE_END_PIECES = frozenset({".", "!", "?", "▁.", "▁?", "▁...", "▁!"})
CLAUSE_END_PIECES = frozenset({",", "▁,", "-"})
QUOTE_PIECES = frozenset({"'", "▁'"})


def split_pieces(
    pieces: Sequence[str], max_tokens: int = MAX_TEXT_TOKENS_PER_SEGMENT, quick_streaming_tokens: int = 0
) -> list[list[str]]:
    """Official TextTokenizer.split_segments rules, flattened.

    1. Cut the piece stream into atoms: after every "," / "▁," / "-" piece; after a sentence-end piece
       once the atom holds more than 2 pieces (a quote right after it stays with that sentence); and
       when an atom reaches max_tokens + 1 pieces, into max_tokens pieces and the 1 piece left over.
    2. Greedily join neighbouring atoms while the joined segment stays within max_tokens and more than
       quick_streaming_tokens pieces have been seen so far (or while it stays within max_tokens / 2).

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
        if (joined <= max_tokens and seen > quick_streaming_tokens) or joined <= max_tokens / 2:
            segments[-1] += atom
        else:
            segments.append(list(atom))
    return segments


# --------------------------------------------------------------------------------------------------
# Front-end
# --------------------------------------------------------------------------------------------------


class TextFrontend:
    """Normalise text, encode it with a SentencePiece bpe.model and cut it into GPT-sized segments."""

    def __init__(self, bpe_model_path: str | Path) -> None:
        path = Path(bpe_model_path)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {path}")
        self.bpe_model_path = path
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
        normalized = normalize_text(text)
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
            piece for piece, token_id in zip(pieces, self._pieces_to_ids(pieces)) if token_id == self.unk_id
        ]

    def split_segments(
        self, text: str, max_tokens: int = MAX_TEXT_TOKENS_PER_SEGMENT, quick_streaming_tokens: int = 0
    ) -> list[list[int]]:
        """Ids of the text cut into segments of at most max_tokens, in order, covering all of it."""
        segments = split_pieces(self.pieces(text), max_tokens, quick_streaming_tokens)
        return [self._pieces_to_ids(segment) for segment in segments]

    def _pieces_to_ids(self, pieces: list[str]) -> list[int]:
        # Pieces the model lacks (unknown characters) come back as unk_id, as in the official code.
        return [self._sp.piece_to_id(piece) for piece in pieces]


# --------------------------------------------------------------------------------------------------
# Demo bpe.model
# --------------------------------------------------------------------------------------------------

# Training sentences for a small demo bpe.model: English, Chinese and mixed lines, normalised with
# normalize_text before training, as the official model was trained on normalised text.
DEMO_CORPUS = """\
The quick brown fox jumps over the lazy dog.
Good morning, everyone! Thank you for coming today.
How are you feeling this afternoon?
I would like a cup of tea, please.
She said, "Let's meet at the station at 8:30."
The weather is lovely today, isn't it?
We walked along the river until the sun went down.
Please turn off the lights before you leave the room.
Could you tell me the way to the nearest library?
It's a beautiful day for a long walk in the park.
He has been working on this project for three years.
The train to London leaves at 9:15 every morning.
My favourite season is autumn, when the leaves turn red and gold.
Reading a good book is the best way to spend a rainy evening.
They built a small house near the sea.
Where's the key? I left it on the kitchen table.
What's the time? It's almost midnight.
The children were laughing and playing in the garden.
Music has the power to bring people together.
Don't forget to call your mother on her birthday.
Technology changes the way we live and work.
A journey of a thousand miles begins with a single step.
The meeting has been moved to Thursday afternoon.
Please speak slowly and clearly, so everyone can understand.
I can't believe how fast this year has gone by!
The museum is open from Tuesday to Sunday.
There are 365 days in a year, and 12 months.
The price of the ticket is $25, including the guide.
About 75% of the students passed the final exam.
The voice sounded calm, warm and confident.
Our new model speaks English and Chinese with natural rhythm.
Text to speech systems turn written words into spoken audio.
Every sentence should end with a clear and gentle pause.
The speaker paused for a moment, then continued with a smile.
Who's ready for the next adventure?
This is the first time I have seen snow.
She won second place in the national competition.
The 21st century brought many changes to daily life.
Open the window, it's getting warm in here.
He whispered, "Don't be afraid; I'm right here."
The cat slept on the sofa all afternoon.
Fresh bread smells wonderful in the early morning.
We need eggs, milk, butter and a little sugar.
Learning a new language takes patience and practice.
The river flows quietly through the old town.
Could you please repeat that more slowly?
Wait... did you hear that sound?
Well, I suppose we could try again tomorrow.
The doctor said I should drink more water.
There is nothing more relaxing than a quiet evening at home.
The well-known writer signed copies of her latest novel.
My brother-in-law lives in a small village by the mountains.
Our flight was delayed by two hours because of the storm.
The garden is full of roses, tulips and sunflowers.
I think that's a wonderful idea!
Is this seat taken?
No, please sit down, make yourself at home.
The concert starts at 7:00 in the evening.
He ran 10 kilometres in just under an hour.
The population of the city is about 2,500,000 people.
The recipe needs 2.5 cups of flour and 3 eggs.
We'll meet again, don't know where, don't know when.
She opened the letter and began to read it aloud.
The night sky was full of bright stars.
Thank you very much for your kind help.
You're welcome, it was my pleasure.
Excuse me, where can I buy a ticket?
The shop on the corner sells fresh fruit and flowers.
Every morning he goes running before breakfast.
The old man told stories about his childhood by the sea.
A smile is the shortest distance between two people.
Let me think about it and get back to you.
The results will be announced next Monday.
Please keep your voice down, the baby is sleeping.
Happy birthday! I hope all your wishes come true.
The bridge was built more than 100 years ago.
We should protect the environment for future generations.
The library has thousands of books in many languages.
This road leads to the top of the hill.
The soup is too hot, let it cool for a minute.
He plays the piano beautifully.
Their house has a red door and a big window.
I'm sorry, I didn't catch your name.
My name is Anna, and I'm from Canada.
The game ended in a draw, one to one.
Science helps us understand the world around us.
The ocean covers most of the surface of the earth.
A good friend is always there when you need one.
The lecture was long, but very interesting.
Keep calm and carry on.
The little girl asked, "Why is the sky blue?"
Because sunlight is scattered by the air, her father replied.
After the rain, a rainbow appeared over the valley.
The bus was crowded, so we decided to walk.
I'll have the vegetable soup and a glass of orange juice.
Our team finished the project two weeks early.
The first chapter introduces the main characters.
Listen carefully, and you'll hear the birds singing.
The station is just five minutes from here.
How much does this jacket cost?
It costs forty dollars, but it's on sale today.
Time flies when you're having fun.
He opened the door and stepped into the cold night.
Be careful, the floor is wet!
Welcome to the show, ladies and gentlemen.
The machine learns from examples, one step at a time.
The model reads the text and predicts the sound of each word.
A clear voice makes a long story easy to follow.
Good night, and sweet dreams.
See you tomorrow at the same place.
The students listened to the teacher in silence.
I have never visited Japan, but I would love to go.
The first snow fell quietly over the city.
Please write your name at the top of the page.
The news spread quickly through the small town.
We watched the sunset from the top of the tower.
The more you practise, the better you become.
Nothing is impossible if you keep trying.
He closed his eyes and listened to the waves.
The phone rang three times, then stopped.
She laughed so hard that she started to cry.
Turn left at the second traffic light.
The exhibition will be open until the end of May.
Honesty is the best policy.
The robot said: "Hello, human. How can I help you?"
They said the test would take about 45 minutes.
The road is closed (because of the flood) until Friday.
The answer is simple: work hard, and be kind.
Everything will be fine, trust me.
今天天气很好，我们一起去公园散步吧。
你好，很高兴认识你！
请问，去火车站怎么走？
我每天早上七点起床，然后吃早饭。
这本书非常有意思，我已经看了两遍了。
他说：“明天我们一起去看电影，好吗？”
春天来了，花开了，小鸟在树上唱歌。
我们的学校有一个很大的图书馆。
你喜欢喝茶还是喝咖啡？
这个问题有点难，让我想一想。
妈妈做的饭菜总是那么好吃。
晚上的时候，天上有很多星星。
请大家安静一下，会议马上开始。
他是一个很有耐心的老师。
我们明天下午三点在门口见面。
这件衣服多少钱？
一百二十块，今天打八折。
小时候，我最喜欢听爷爷讲故事。
学习一门新的语言需要时间和耐心。
雨停了，天边出现了一道彩虹。
谢谢你的帮助，真是太感谢了！
不客气，这是我应该做的。
这个城市的夜景非常美丽。
你昨天晚上几点睡觉的？
我们一起努力，一定能成功。
他跑得很快，第一个到达了终点。
今年的冬天特别冷，下了好几场大雪。
请把窗户打开，房间里太热了。
我的家乡在一个小山村里，风景很美。
这家饭店的菜又便宜又好吃。
时间过得真快，一年又过去了。
你能再说一遍吗？我没有听清楚。
老师说，明天的考试很重要。
我觉得这个主意很好！
他一边听音乐，一边写作业。
周末我们去海边玩，好不好？
这条路一直走，就能看到银行。
孩子们在操场上开心地玩耍。
读书使人进步，学习让人快乐。
我有一个哥哥和一个妹妹。
今天是二零二五年一月一日，新年快乐！
这座桥已经有一百多年的历史了。
我每天走路上班，大概需要二十分钟。
他把手机忘在出租车上了。
你知道这个字怎么读吗？
我们应该保护环境，爱护地球。
这部电影讲的是一个关于友情的故事。
外面下雨了，记得带伞。
他说话的声音很温柔。
我的朋友明天要去北京出差。
这个苹果又大又红，看起来很甜。
你吃过北京烤鸭吗？
大家好，欢迎收听今天的节目。
语音合成技术可以把文字变成声音。
这个模型能用自然的语气说中文和英文。
每个句子的结尾都应该有一个自然的停顿。
他停了一下，然后笑着继续说下去。
请在下面的空白处写上你的名字。
那天晚上，月亮又大又圆。
我们一家人在一起吃年夜饭。
她的梦想是成为一名医生。
这里的空气很新鲜，环境也很安静。
他每天坚持锻炼身体。
你有什么问题，可以随时问我。
这次比赛，我们班得了第一名。
小猫在沙发上睡了一下午。
早上的面包闻起来特别香。
我们需要鸡蛋、牛奶、黄油和一点糖。
河水静静地流过古老的小镇。
等一下……你听到那个声音了吗？
好吧，那我们明天再试一次。
医生说我应该多喝水。
没有什么比在家里度过一个安静的晚上更放松的了。
暴风雨让我们的航班推迟了两个小时。
花园里开满了玫瑰、郁金香和向日葵。
这个座位有人吗？
没有，请坐吧，别客气。
音乐会晚上七点开始。
这座城市大约有两百五十万人口。
做这道菜需要两杯半的面粉和三个鸡蛋。
她打开信，开始大声地读起来。
非常感谢你的热情帮助。
对不起，请问在哪里买票？
拐角的那家店卖新鲜的水果和花。
老人讲起了他在海边度过的童年。
微笑是人与人之间最短的距离。
让我考虑一下，再回复你。
结果将在下周一公布。
请小声一点，宝宝正在睡觉。
生日快乐！祝你心想事成。
科学帮助我们了解周围的世界。
好朋友总是在你需要的时候出现在你身边。
这个讲座很长，但是非常有意思。
小女孩问：“为什么天空是蓝色的？”
雨后，山谷上空出现了一道彩虹。
公共汽车太挤了，所以我们决定走路。
我们的团队提前两周完成了项目。
仔细听，你会听到小鸟在唱歌。
车站离这里只有五分钟。
这件外套多少钱？
时间在快乐的时候总是过得很快。
小心，地板很滑！
欢迎来到我们的节目，女士们，先生们。
机器从例子中学习，一步一步地进步。
清晰的声音让长故事更容易听懂。
晚安，祝你做个好梦。
明天同一个地方见。
《红楼梦》是中国古代四大名著之一。
他的名字叫克里斯托弗·诺兰，是一位导演。
这个价格大概占总数的百分之三十。
我们的会议室在三楼，请走楼梯上去。
请不要在图书馆里大声说话。
这个消息很快就传遍了整个小镇。
我们在塔顶看日落。
越练习，就越熟练。
只要坚持，没有什么是不可能的。
他闭上眼睛，静静地听着海浪的声音。
电话响了三声，然后就停了。
第二个红绿灯向左转。
展览会一直开到五月底。
诚实是最好的策略。
答案很简单：努力工作，善待他人。
一切都会好起来的，相信我。
我爱你！
今天是个好日子 it's a good day.
IndexTTS 正式发布1.0版本了，效果666。
这个 model 的声音听起来很 natural。
我们用 Python 写了一个小程序。
明天的 meeting 改到下午三点了。
这款手机支持5G网络，价格是1999元。
请打开 Wi-Fi，然后连接到网络。
我最喜欢的歌手是 Taylor Swift。
他在 Google 工作了五年。
这个 App 非常好用，推荐给你。
今天的 KPI 完成了吗？
我们下周去 New York 出差。
这部电影的英文名字叫 Inception。
他的 email 地址写错了。
GPT-5 是一个很大的语言模型。
晕XUAN4是一种GAN3觉。
最zhong4要的是：不要chong2蹈覆辙。
“衣裳”不读衣chang2，而是读衣shang5。
受不liao3你了。
不zuo1死就不会死。
这个字读jue2，不读que4。
我们一起学习pin1yin1吧。
See you at 8:00 AM, 明天见。
OK，没问题，我马上就来。
这是 version 2 的新功能。
Hello，你好，欢迎来到中国！
Thank you，谢谢你的帮助。
He said 他明天不来了。
我喜欢听 jazz 和 rock 音乐。
这个 project 的 deadline 是下周五。
The weather in Beijing is cold in winter.
Shanghai is one of the largest cities in the world.
I am learning Chinese, and it's a lot of fun.
My Chinese teacher speaks very slowly and clearly.
"""


def _demo_lines(vocab_size: int) -> list[str]:
    """Normalised corpus lines, dropping the lines with the rarest characters until the character set
    leaves a quarter of vocab_size for merged pieces (SentencePiece needs every character of the
    training text in the vocabulary, and its character_coverage cannot go below 0.98)."""
    lines = [normalize_text(line) for line in DEMO_CORPUS.splitlines() if line.strip()]
    # SentencePiece's own normalisation (nmt_nfkc) turns "…" into "..."; "▁" stands for the spaces.
    char_budget = vocab_size - 3 - vocab_size // 4
    while True:
        counts = Counter(
            char for line in lines for char in unicodedata.normalize("NFKC", line).replace(" ", "▁")
        )
        counts["▁"] += len(lines)
        if len(counts) <= char_budget:
            return lines
        rarest = min(counts, key=lambda char: (counts[char], char))
        lines = [line for line in lines if rarest not in line]


def train_demo_bpe(out_path: str | Path, vocab_size: int) -> Path:
    """Train a small SentencePiece BPE model on DEMO_CORPUS and write it to out_path.

    vocab_size must not exceed the GPT's number_text_tokens; the corpus supports up to 3543. From 768
    up every character of the corpus has a piece; smaller vocabularies (down to 64, e.g. 100 for the
    tiny golden GPT) leave out the lines with the rarest characters, mostly Chinese ones, which then
    encode as <unk>.

    Same layout as the official bpe.model: <s> = 0 (start_text_token), </s> = 1 (stop_text_token),
    <unk> = 2, no padding piece. Deterministic: one thread, no sampling or shuffling, trained from an
    in-memory iterator so that no path ends up inside the model; the same vocab_size gives the same bytes.
    """
    if vocab_size < 64:
        raise ValueError(f"vocab_size must be >= 64, got {vocab_size}")
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_demo_lines(vocab_size)),
            model_writer=writer,
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=1.0,
            bos_id=START_TEXT_TOKEN,
            eos_id=STOP_TEXT_TOKEN,
            unk_id=2,
            pad_id=-1,
            bos_piece="<s>",
            eos_piece="</s>",
            unk_piece="<unk>",
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as error:
        raise ValueError(f"cannot train a demo bpe.model with vocab_size {vocab_size}: {error}") from error
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(writer.getvalue())
    return out_path
