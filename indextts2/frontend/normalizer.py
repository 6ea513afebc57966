"""The official IndexTTS-2 text normaliser: WeTextProcessing's Chinese and English TN grammars, with the
pre- and post-processing of the official TextNormalizer (indextts/utils/front.py) around them.

What runs, as in an official Linux install (its uv.lock pins WeTextProcessing 1.0.4.1 and pynini 2.1.6):
the text takes the Chinese grammar when `uses_chinese_rules` says so, else the English one. Around the
grammar, in the official order: "it's"-style contractions are expanded; `<字|读音>` pronunciation
annotations, hyphenated technical terms (GPT-5-nano), pinyin with tone digits (xuan4) and hyphen- or
dot-joined Chinese names are kept from the grammar and put back after it; then the official punctuation
map. Not carried over: the official glossary (an optional glossary.yaml of term readings; without the
file it is empty, and it was empty when the golden corpus was made). One deliberate difference: where
two protected matches overlap, ours is deterministic and the official one depends on the hash seed
(see `_protect`).

The FSTs. The English tagger and verbaliser, and the Chinese tagger, are the prebuilt files shipped in
the WeTextProcessing wheel. The official code asks for the Chinese grammar with interjections and erhua
kept (not the wheel's default), so WeTextProcessing would build the Chinese FSTs on first load (~2 min on
2 cores). Only the verbaliser depends on those options, and the built tagger is byte-identical to the
wheel's; so `build_fsts` builds the verbaliser alone (~2 s, deterministic, byte-identical to the official
build), copies the wheel's tagger beside it, and the service loads both from that folder. `make` runs
the build (`python -m indextts2.frontend.normalizer`); where the folder is missing anyway (a bare
`pytest`, a fresh build/), the first `load_normalizer` builds it, once, under a file lock.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path

__all__ = [
    "FST_DIR_ENV",
    "TextNormalizer",
    "build_fsts",
    "correct_pinyin",
    "default_fst_dir",
    "load_normalizer",
    "uses_chinese_rules",
]

logger = logging.getLogger(__name__)

WETEXTPROCESSING_VERSION = version("WeTextProcessing")
PYNINI_VERSION = version("pynini")
# Where the FSTs go unless the caller or this variable says otherwise.
FST_DIR_ENV = "INDEXTTS2_TN_FST_DIR"
_REPO_ROOT = Path(__file__).resolve().parents[2]
# The file names WeTextProcessing reads from a cache folder.
CHINESE_TAGGER = "zh_tn_tagger.fst"
CHINESE_VERBALIZER = "zh_tn_verbalizer.fst"
ENGLISH_FSTS = ("en_tn_tagger.fst", "en_tn_verbalizer.fst")

# --------------------------------------------------------------------------------------------------
# The official rules around the grammar
# --------------------------------------------------------------------------------------------------

# Official TextNormalizer.char_rep_map, applied after the grammar in one left-to-right pass with the keys
# tried in this order (so "……" becomes one "…").
PUNCTUATION_MAP: dict[str, str] = {
    "：": ",", "；": ",", ";": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": " ", "·": "-", "、": ",",
    "...": "…", ",,,": "…", "，，，": "…", "……": "…",
    "“": "'", "”": "'", '"': "'", "‘": "'", "’": "'", "（": "'", "）": "'", "(": "'", ")": "'",
    "《": "'", "》": "'", "【": "'", "】": "'", "[": "'", "]": "'",
    "—": "-", "～": "-", "~": "-", "「": "'", "」": "'", ":": ",",
}  # fmt: skip
# Text under the Chinese rules also maps a leftover "$" to "." (official zh_char_rep_map).
CHINESE_PUNCTUATION_MAP: dict[str, str] = {"$": ".", **PUNCTUATION_MAP}

# Pinyin syllable with a tone digit 1-5 (5 = neutral tone), e.g. xuan4, jve2, shang5; the look-behind
# keeps words like beta1 or voice2 out. Official TextNormalizer.PINYIN_TONE_PATTERN.
PINYIN_TONE_PATTERN = (
    r"(?<![a-z])((?:[bpmfdtnlgkhjqxzcsryw]|[zcs]h)?(?:[aeiouüv]|[ae]i|u[aio]|ao|ou|i[aue]|[uüv]e|"
    r"[uvü]ang?|uai|[aeiuv]n|[aeio]ng|ia[no]|i[ao]ng)|ng|er)([1-5])"
)
# Chinese names joined by "-", "·" or "—" (克里斯托弗·诺兰); the grammar would read the hyphen as minus.
NAME_PATTERN = r"[\u4e00-\u9fff]+(?:[-·—][\u4e00-\u9fff]+){1,2}"
# Hyphenated terms that start with a letter (GPT-5-nano, F5-TTS), so "-5" is not read as minus five.
TECH_TERM_PATTERN = r"[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)+"
# "it's" -> "it is" for a few words. Official pattern, with its quirks: no word boundary ("bit's" ->
# "bit is") and the straight apostrophe only.
CONTRACTION_PATTERN = r"(what|where|who|which|how|t?here|it|s?he|that|this)'s"
# A pronunciation annotation <字|读音>, kept out of the grammar's reach.
ANNOTATION_PATTERN = r"<([^|>\n]+)\|([^>\n]+)>"

_PINYIN = re.compile(PINYIN_TONE_PATTERN, re.IGNORECASE)
_NAME = re.compile(NAME_PATTERN)
_TECH_TERM = re.compile(TECH_TERM_PATTERN)
_TECH_HYPHEN = re.compile(r"\s*<H>\s*")
_CONTRACTION = re.compile(CONTRACTION_PATTERN, re.IGNORECASE)
_ANNOTATION = re.compile(ANNOTATION_PATTERN)
_HAN = re.compile(r"[\u4e00-\u9fff]")
_LATIN = re.compile(r"[a-zA-Z]")
_EMAIL = re.compile(r"^[a-zA-Z0-9]+@[a-zA-Z0-9]+\.[a-zA-Z]+$")
_PUNCTUATION = re.compile("|".join(re.escape(key) for key in PUNCTUATION_MAP))
_CHINESE_PUNCTUATION = re.compile("|".join(re.escape(key) for key in CHINESE_PUNCTUATION_MAP))


def uses_chinese_rules(text: str) -> bool:
    """Official TextNormalizer.use_chinese: Han characters, no Latin letters, an e-mail, or pinyin."""
    if _HAN.search(text) or not _LATIN.search(text) or _EMAIL.match(text):
        return True
    return _PINYIN.search(text) is not None


def correct_pinyin(syllable: str) -> str:
    """j/q/x followed by u or ü is written with v and upper-cased (ju4 -> JV4), as the bpe.model's
    pinyin pieces are; other syllables stay as written (official correct_pinyin)."""
    if syllable[0] not in "jqxJQX":
        return syllable
    return re.sub(r"([jqx])[uü](n|e|an)*(\d)", r"\g<1>v\g<2>\g<3>", syllable, flags=re.IGNORECASE).upper()


def _letters(index: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa: placeholder names made of letters only, which no grammar rewrites."""
    name = ""
    while True:
        name = chr(ord("a") + index % 26) + name
        index = index // 26 - 1
        if index < 0:
            return name


def _protect(text: str, found: list[str], placeholder: str) -> tuple[str, dict[str, str]]:
    """Replace every occurrence of each found string by a lettered placeholder, longest first.

    The official code goes through a set, so when one match overlaps another (克里斯托弗·诺兰 after a
    name match that ends in 克里斯托弗) its output depends on the hash seed; longest first always
    keeps the longer match whole, the official outcome under some seeds."""
    saved: dict[str, str] = {}
    for index, original in enumerate(sorted(dict.fromkeys(found), key=len, reverse=True)):
        key = placeholder.format(_letters(index))
        text = text.replace(original, key)
        saved[key] = original
    return text, saved


def _protect_terms(text: str) -> tuple[str, bool]:
    """GPT-5-nano -> GPT<H>5<H>nano (the grammar still reads the 5); `_TECH_HYPHEN` puts the hyphens
    back. Longest terms first, so that a term inside a longer one is not protected on its own."""
    terms = sorted(set(_TECH_TERM.findall(text)), key=lambda term: (-len(term), term))
    for term in terms:
        text = text.replace(term, term.replace("-", "<H>"))
    return text, bool(terms)


def _restore(text: str, saved: dict[str, str]) -> str:
    for key, original in saved.items():
        text = text.replace(key, original)
    return text


class TextNormalizer:
    """WeTextProcessing's TN normalisers with the official rules around them. Build with `load_normalizer`.

    `normalize` returns what the official TextNormalizer.normalize returns (before upper-casing and the
    CJK split, which belong to tokenisation). Safe to call from several threads.
    """

    def __init__(self, chinese_grammar: object, english_grammar: object, fst_dir: Path) -> None:
        self.fst_dir = fst_dir
        self._chinese = chinese_grammar
        self._english = english_grammar
        # WeTextProcessing does not say its normalisers may be shared between threads; a call takes
        # milliseconds to a few hundred, so one at a time costs the service little.
        self._lock = threading.Lock()

    def normalize(self, text: str) -> str:
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        annotations: dict[str, str] = {}

        def hide(match: re.Match[str]) -> str:
            key = f"PRONPLACEHOLDER{_letters(len(annotations))}PRONPLACEHOLDER"
            annotations[key] = match.group()
            return key

        # Before the language decision, as in the official code (the placeholder is Latin letters).
        text = _ANNOTATION.sub(hide, text)
        result = self._chinese_branch(text) if uses_chinese_rules(text) else self._english_branch(text)
        return _restore(result, annotations)

    def _chinese_branch(self, text: str) -> str:
        text, has_terms = _protect_terms(_CONTRACTION.sub(r"\1 is", text).rstrip())
        text, pinyin = _protect(text, ["".join(parts) for parts in _PINYIN.findall(text)], "<pinyin_{}>")
        text, names = _protect(text, _NAME.findall(text), "<n_{}>")
        try:
            with self._lock:
                result = self._chinese.normalize(text)
        except Exception:  # the official code speaks nothing rather than fail; so do we
            # The length only: warnings become Sentry breadcrumbs, and events never hold the text.
            logger.warning("the Chinese text normaliser failed on a %d-character text", len(text), exc_info=True)
            result = ""
        result = _restore(result, names)
        result = _restore(result, {key: correct_pinyin(syllable) for key, syllable in pinyin.items()})
        if has_terms:
            result = _TECH_HYPHEN.sub("-", result)
        return _CHINESE_PUNCTUATION.sub(lambda match: CHINESE_PUNCTUATION_MAP[match.group()], result)

    def _english_branch(self, text: str) -> str:
        text = _CONTRACTION.sub(r"\1 is", text)
        protected, has_terms = _protect_terms(text)
        try:
            with self._lock:
                result = self._english.normalize(protected)
            if has_terms:
                result = _TECH_HYPHEN.sub("-", result)
        except Exception:  # the official code then speaks the text as it came
            logger.warning("the English text normaliser failed on a %d-character text", len(text), exc_info=True)
            result = text
        return _PUNCTUATION.sub(lambda match: PUNCTUATION_MAP[match.group()], result)


# --------------------------------------------------------------------------------------------------
# FSTs: built once, loaded from files
# --------------------------------------------------------------------------------------------------


def default_fst_dir() -> Path:
    """$INDEXTTS2_TN_FST_DIR, else build/text_normalizer/<versions>/ in the repository (git-ignored)."""
    if os.environ.get(FST_DIR_ENV):
        return Path(os.environ[FST_DIR_ENV])
    name = f"wetextprocessing-{WETEXTPROCESSING_VERSION}-pynini-{PYNINI_VERSION}"
    return _REPO_ROOT / "build" / "text_normalizer" / name


def _wheel_fst_dir() -> Path:
    import tn  # WeTextProcessing's package

    return Path(tn.__file__).resolve().parent


def _official_chinese_grammar(cache_dir: Path) -> object:
    """WeTextProcessing's Chinese normaliser with the official options, loaded from cache_dir; it builds
    whatever FST is missing there, so callers make sure both are present first."""
    from tn.chinese.normalizer import Normalizer

    return Normalizer(cache_dir=str(cache_dir), remove_interjections=False, remove_erhua=False,
                      overwrite_cache=False)


def _build_chinese_fsts(out_dir: Path) -> None:
    """Write the official-option Chinese tagger and verbaliser into out_dir, from WeTextProcessing's own
    grammar code."""
    from tn.chinese.normalizer import Normalizer
    from tn.processor import Processor

    class OfficialChineseGrammar(Normalizer):
        # Normalizer.__init__ would load or build both FSTs; this sets the options it would set (the
        # official ones) and builds nothing.
        def __init__(self) -> None:
            Processor.__init__(self, name="zh_normalizer")
            self.remove_interjections = False
            self.remove_erhua = False
            self.traditional_to_simple = True
            self.remove_puncts = False
            self.full_to_half = True
            self.tag_oov = False

    grammar = OfficialChineseGrammar()
    if hasattr(grammar, "build_tagger_and_verbalizer"):
        # WeTextProcessing 1.1 and later build both in one go (~15 s); a version bump lands here.
        grammar.build_tagger_and_verbalizer()
        grammar.tagger.optimize().write(str(out_dir / CHINESE_TAGGER))
    else:
        # 1.0.x: the options only reach the verbaliser; the tagger is the wheel's (the same bytes as a
        # build with the official options would write, measured on 1.0.4.1).
        grammar.build_verbalizer()
        shutil.copyfile(_wheel_fst_dir() / CHINESE_TAGGER, out_dir / CHINESE_TAGGER)
    grammar.verbalizer.optimize().write(str(out_dir / CHINESE_VERBALIZER))


def _is_built(fst_dir: Path) -> bool:
    return (fst_dir / CHINESE_TAGGER).is_file() and (fst_dir / CHINESE_VERBALIZER).is_file()


def build_fsts(fst_dir: str | Path | None = None) -> Path:
    """Write the Chinese tagger and official-option verbaliser into fst_dir (default `default_fst_dir()`)
    unless they are there; safe to run from several processes at once. Returns the folder."""
    fst_dir = Path(fst_dir) if fst_dir is not None else default_fst_dir()
    fst_dir.mkdir(parents=True, exist_ok=True)
    with open(fst_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_built(fst_dir):
            return fst_dir
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=fst_dir) as scratch:
            _build_chinese_fsts(Path(scratch))
            # The verbaliser last: a folder with both files is a finished build.
            os.replace(Path(scratch) / CHINESE_TAGGER, fst_dir / CHINESE_TAGGER)
            os.replace(Path(scratch) / CHINESE_VERBALIZER, fst_dir / CHINESE_VERBALIZER)
        logger.info("built the Chinese text-normaliser FSTs in %s (%.1f s)", fst_dir, time.perf_counter() - started)
    return fst_dir


@functools.cache
def _load(fst_dir: Path) -> TextNormalizer:
    from tn.english.normalizer import Normalizer as EnglishNormalizer

    if not _is_built(fst_dir):
        logger.warning("no text-normaliser FSTs in %s; building them (run `make` to do it ahead)", fst_dir)
        build_fsts(fst_dir)
    wheel = _wheel_fst_dir()
    missing = [name for name in ENGLISH_FSTS if not (wheel / name).is_file()]
    if missing:  # WeTextProcessing would build them where it is installed, at run time
        raise FileNotFoundError(f"the WeTextProcessing install lacks its prebuilt {missing} in {wheel}")
    return TextNormalizer(_official_chinese_grammar(fst_dir), EnglishNormalizer(overwrite_cache=False), fst_dir)


def load_normalizer(fst_dir: str | Path | None = None) -> TextNormalizer:
    """The normaliser on the FSTs in fst_dir (default `default_fst_dir()`), loaded once per process
    (~4 s) and shared; builds the FSTs first if they are not there."""
    fst_dir = Path(fst_dir) if fst_dir is not None else default_fst_dir()
    return _load(fst_dir.resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the text normaliser's FSTs (what `make` runs).")
    parser.add_argument("fst_dir", nargs="?", type=Path, default=None, help="default: " + str(default_fst_dir()))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fst_dir = build_fsts(args.fst_dir)
    print(f"text-normaliser FSTs (WeTextProcessing {WETEXTPROCESSING_VERSION}, pynini {PYNINI_VERSION}): {fst_dir}")


if __name__ == "__main__":
    main()
