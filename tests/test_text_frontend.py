"""Text front-end: the official normaliser (against the golden corpus), bpe encoding, segment splitting
and the demo bpe.model."""

import io
import json
import os
import time
from pathlib import Path

import pytest
import sentencepiece as spm

from indextts2.frontend import normalizer as tn
from indextts2.frontend.demo_bpe import DEMO_CORPUS, train_demo_bpe
from indextts2.frontend.normalizer import TextNormalizer, build_fsts, load_normalizer
from indextts2.frontend.text import TextError, TextFrontend, normalize_text, split_pieces

DEMO_VOCAB_SIZE = 1024  # large enough for every character of the demo corpus
REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = Path(os.environ.get("INDEXTTS2_GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden"))
# The official front-end's output with the versions its uv.lock pins (see the folder's README.md).
GOLDEN_CORPUS = GOLDEN_DIR / "text_normalization" / "official_normalized.jsonl"

# Golden lines we knowingly do not match: input text -> reason. Every one must still mismatch (the test
# fails otherwise), so the list cannot outlive its reasons. Empty: all 300 lines match.
KNOWN_EXCEPTIONS: dict[str, str] = {}

LONG_TEXT = (
    "The quick brown fox jumps over the lazy dog. Good morning, everyone! Thank you for coming today. "
    "Reading a good book is the best way to spend a rainy evening, and music has the power to bring "
    "people together. 今天天气很好，我们一起去公园散步吧。你好，很高兴认识你！"
    "学习一门新的语言需要时间和耐心。"
    "He whispered, \"Don't be afraid; I'm right here.\" The results will be announced next Monday. "
    "这个模型能用自然的语气说中文和英文，每个句子的结尾都应该有一个自然的停顿。"
) * 4


@pytest.fixture(scope="module")
def normalizer() -> TextNormalizer:
    # The process's shared normaliser: FSTs from build/text_normalizer/ (built there on first use).
    return load_normalizer()


@pytest.fixture(scope="module")
def demo_bpe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_demo_bpe(tmp_path_factory.mktemp("bpe") / "bpe.model", DEMO_VOCAB_SIZE)


@pytest.fixture(scope="module")
def frontend(demo_bpe: Path, normalizer: TextNormalizer) -> TextFrontend:
    return TextFrontend(demo_bpe, normalizer)


# --- normalisation ---------------------------------------------------------------------------------


def test_the_versions_the_golden_corpus_was_made_with_are_installed() -> None:
    assert (tn.WETEXTPROCESSING_VERSION, tn.PYNINI_VERSION) == ("1.0.4.1", "2.1.6")


def test_every_golden_line_matches_the_official_normaliser(normalizer: TextNormalizer) -> None:
    if not GOLDEN_CORPUS.is_file():
        pytest.skip(f"golden corpus not found at {GOLDEN_CORPUS} (set INDEXTTS2_GOLDEN_DIR)")
    lines = [json.loads(line) for line in GOLDEN_CORPUS.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 300
    mismatches = {}
    for line in lines:
        ours = normalizer.normalize(line["text"])
        if ours != line["normalized"]:
            mismatches[line["text"]] = f"{line['text']!r}\n  ours:     {ours!r}\n  official: {line['normalized']!r}"
    unexpected = [report for text, report in mismatches.items() if text not in KNOWN_EXCEPTIONS]
    assert not unexpected, f"{len(unexpected)} of {len(lines)} golden lines differ:\n" + "\n".join(unexpected)
    assert set(KNOWN_EXCEPTIONS) <= set(mismatches), "listed exceptions that now match: " + ", ".join(
        repr(text) for text in set(KNOWN_EXCEPTIONS) - set(mismatches)
    )


# Cases the golden corpus does not hold, with what the official front-end (index-tts ee40fa7,
# TextNormalizer + tokenize_by_CJK_char, WeTextProcessing 1.0.4.1) returned for them.
OFFICIAL_TOKENISED = [
    # The examples: the hand-written normaliser said "TWO THOUSAND TWENTY FOUR-FIVE-ONE.",
    # "-FIVE" and "TWO POINT ZERO. ONE".
    ("on 2024-05-01.", "ON THE FIRST OF MAY TWENTY TWENTY FOUR."),
    ("It is -5 degrees.", "IT IS NEGATIVE FIVE DEGREES."),
    ("-5", "负 五"),
    ("Please upgrade to 2.0.1.", "PLEASE UPGRADE TO TWO POINT OH POINT ONE."),
    # Pronunciation annotations, contractions, pinyin, technical terms and names kept from the grammar.
    ("我们<行|xing2>走吧，<重|chong2>新开始。", "我 们 < 行 |XING2> 走 吧 ,< 重 |CHONG2> 新 开 始 ."),
    ("The <read|red> book.", "THE <READ|RED> BOOK."),
    ("bit's it's WHERE'S It’s", "BIT IS IT IS WHERE IS IT'S"),
    ("xuan4 XUAN4 jue2 ju4 不zuo1死", "XVAN4 XVAN4 JVE2 JV4 不 ZUO1 死"),
    ("用beta1测试", "用 BETA 一 测 试"),
    ("Fish-Speech and F5-TTS", "FISH-SPEECH AND F FIVE-TTS"),
    ("GPT-5-Nano 是 GPT-5 模型", "GPT- 五 -NANO 是 GPT- 五 模 型"),
    ("约瑟夫·高登-莱维特（Joseph Gordon-Levitt）", "约 瑟 夫 - 高 登 - 莱 维 特 'JOSEPH GORDON-LEVITT'"),
    # The punctuation map, whitespace and full-width forms.
    ("“我爱你”的英语是“I love you”", "' 我 爱 你 ' 的 英 语 是 'I LOVE YOU'"),
    ("《红楼梦》、【注】「好」。", "' 红 楼 梦 ',' 注 '' 好 '."),
    ("克里斯托弗·诺兰——导演～", "克 里 斯 托 弗 - 诺 兰 -- 导 演 -"),
    ('Wait: (really) [yes]; "ok" ~ fine', "WAIT, 'REALLY' 'YES', 'OK' TILDE FINE"),
    ("这酒...里……有毒。。。", "这 酒 … 里 … 有 毒 …"),
    ("只有,,,才是最好的", "只 有 … 才 是 最 好 的"),
    ("价格是$5", "价 格 是 五 美 元"),
    ("  hello \t\n  world\r\n ", "HELLO WORLD"),
    ("第一行\n第二行", "第 一 行 第 二 行"),
    ("Ｈｅｌｌｏ\u3000ｗｏｒｌｄ！", "HELLO WORLD!"),
    # Interjections and erhua stay: the official options, not the wheel's default grammar (which
    # drops them: ",好的", "我们一起玩吧").
    ("啊，好的", "啊 , 好 的"),
    ("我们一起玩儿吧", "我 们 一 起 玩 儿 吧"),
]


@pytest.mark.parametrize(("text", "official"), OFFICIAL_TOKENISED)
def test_normalised_text_is_what_the_official_front_end_hands_to_sentencepiece(
    normalizer: TextNormalizer, text: str, official: str
) -> None:
    assert normalize_text(text, normalizer) == official


def test_overlapping_names_are_protected_longest_first(normalizer: TextNormalizer) -> None:
    # The official output depends on the hash seed here (高登-莱维特 or 高登减莱维特); ours does not.
    text = "约瑟夫·高登-莱维特和克里斯托弗·诺兰，克里斯托弗·诺兰"
    assert normalizer.normalize(text) == "约瑟夫-高登-莱维特和克里斯托弗-诺兰,克里斯托弗-诺兰"


class _BrokenGrammar:
    def normalize(self, text: str) -> str:
        raise RuntimeError("grammar failure")


def test_a_grammar_failure_speaks_nothing_in_chinese_and_the_text_as_given_in_english(tmp_path: Path) -> None:
    broken = TextNormalizer(_BrokenGrammar(), _BrokenGrammar(), tmp_path)
    assert broken.normalize("你好，世界") == ""
    assert broken.normalize("It's (fine).") == "It is 'fine'."


def test_the_normaliser_is_loaded_once_per_process(normalizer: TextNormalizer) -> None:
    assert load_normalizer() is normalizer
    assert load_normalizer(normalizer.fst_dir) is normalizer


def test_build_fsts_writes_the_official_chinese_fsts_once(tmp_path: Path) -> None:
    started = time.perf_counter()
    fst_dir = build_fsts(tmp_path / "fsts")
    seconds = time.perf_counter() - started  # ~1.5 s on 2 cores: the verbaliser alone is built
    wheel = tn._wheel_fst_dir()
    tagger, verbalizer = fst_dir / tn.CHINESE_TAGGER, fst_dir / tn.CHINESE_VERBALIZER
    assert tagger.read_bytes() == (wheel / tn.CHINESE_TAGGER).read_bytes()
    # The wheel's verbaliser drops interjections and erhua; the official options keep them.
    assert verbalizer.read_bytes() != (wheel / tn.CHINESE_VERBALIZER).read_bytes()
    assert seconds < 60
    written = verbalizer.stat().st_mtime_ns
    assert build_fsts(fst_dir) == fst_dir and verbalizer.stat().st_mtime_ns == written


def test_demo_corpus_is_written_as_normalised_text(normalizer: TextNormalizer) -> None:
    lines = [line for line in DEMO_CORPUS.splitlines() if line.strip()]
    changed = [(line, normalized) for line in lines if (normalized := normalizer.normalize(line)) != line]
    assert not changed, changed


# --- encoding --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog.",
        "今天天气很好，我们一起去公园散步吧。",
        "今天是个好日子 it's a good day!",
        "He whispered, \"Don't be afraid; I'm right here.\"",
    ],
)
def test_encode_round_trips_to_the_normalised_text(frontend: TextFrontend, text: str) -> None:
    ids = frontend.encode(text)
    assert ids and all(2 < token_id < frontend.vocab_size for token_id in ids)
    assert frontend.unknown_characters(text) == []
    assert frontend.decode(ids) == frontend.normalize(text)


def test_characters_outside_the_vocabulary_become_unk(frontend: TextFrontend) -> None:
    ids = frontend.encode("我爱你龘")
    assert ids.count(frontend.unk_id) == 1
    assert frontend.unknown_characters("我爱你龘") == ["龘"]


def test_text_without_anything_to_speak_raises_text_error(frontend: TextFrontend) -> None:
    for text in ["", "   ", " \t\n\r ", "\u3000", "。！？", "..."]:
        with pytest.raises(TextError, match="nothing to speak"):
            frontend.encode(text)
        with pytest.raises(ValueError):
            frontend.split_segments(text)


# --- segments --------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_tokens", [120, 40, 16, 3])
def test_segments_stay_within_max_tokens_and_cover_the_text_in_order(
    frontend: TextFrontend, max_tokens: int
) -> None:
    segments = frontend.split_segments(LONG_TEXT, max_tokens=max_tokens)
    assert len(segments) > 1
    assert all(0 < len(segment) <= max_tokens for segment in segments)
    assert [token_id for segment in segments for token_id in segment] == frontend.encode(LONG_TEXT)


def test_short_text_is_one_segment(frontend: TextFrontend) -> None:
    text = "Good morning, everyone! 你好。"
    assert frontend.split_segments(text) == [frontend.encode(text)]


def test_segments_end_at_sentence_ends(frontend: TextFrontend) -> None:
    text = "The quick brown fox jumps over the lazy dog. Reading a good book is the best way to relax."
    pieces = frontend.pieces(text)
    first_sentence = pieces.index(".") + 1
    # Too small for both sentences, large enough for either one.
    segments = frontend.split_segments(text, max_tokens=max(first_sentence, len(pieces) - first_sentence))
    assert segments == [frontend.encode(text)[:first_sentence], frontend.encode(text)[first_sentence:]]


def test_split_pieces_cuts_at_sentence_ends_then_commas_then_hard() -> None:
    pieces = ["▁A", "B", "C", ".", "▁D", "E", ",", "F", "G", "H", "I", "J"]
    assert split_pieces(pieces, max_tokens=4) == [
        ["▁A", "B", "C", "."], ["▁D", "E", ","], ["F", "G", "H", "I"], ["J"],
    ]  # fmt: skip
    # Atoms are joined while they fit.
    assert split_pieces(pieces, max_tokens=7) == [
        ["▁A", "B", "C", ".", "▁D", "E", ","],
        ["F", "G", "H", "I", "J"],
    ]
    # A sentence end closes an atom only once the atom has more than two pieces.
    assert split_pieces(["▁A", ".", "B", "C", "D", "E"], max_tokens=3) == [["▁A", ".", "B"], ["C", "D", "E"]]


def test_split_pieces_keeps_a_closing_quote_with_its_sentence_once() -> None:
    pieces = ["▁A", "B", ".", "'", "▁C", "D", "E"]
    assert split_pieces(pieces, max_tokens=4) == [["▁A", "B", ".", "'"], ["▁C", "D", "E"]]
    # No room for the quote: it opens the next segment instead of overflowing.
    assert split_pieces(pieces, max_tokens=3) == [["▁A", "B", "."], ["'", "▁C", "D"], ["E"]]


def test_split_pieces_quick_streaming_keeps_the_first_atoms_apart() -> None:
    pieces = ["▁A", "B", ",", "C", "D", ",", "E", "F", "."]
    assert split_pieces(pieces, max_tokens=8) == [pieces[:6], pieces[6:]]
    # The first 6 pieces are not joined (a short first segment starts streaming sooner).
    assert split_pieces(pieces, max_tokens=8, quick_streaming_tokens=6) == [pieces[:3], pieces[3:]]


def test_split_pieces_first_segment_ends_at_the_first_break_once_long_enough() -> None:
    pieces = ["▁A", "B", ",", "C", "D", ",", "E", "F", ".", "G", "H", "I", "."]
    assert split_pieces(pieces, max_tokens=20) == [pieces]
    # 2 pieces are reached inside the first clause: it ends at its comma; the rest is joined as without.
    assert split_pieces(pieces, max_tokens=20, first_segment_tokens=2) == [pieces[:3], pieces[3:]]
    # 4 pieces are reached in the second clause: the first segment ends at the second comma.
    assert split_pieces(pieces, max_tokens=20, first_segment_tokens=4) == [pieces[:6], pieces[6:]]
    # Longer than the text: one segment, as without.
    assert split_pieces(pieces, max_tokens=20, first_segment_tokens=50) == [pieces]


def test_split_pieces_rejects_a_non_positive_limit() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        split_pieces(["▁A"], max_tokens=0)


# --- demo bpe.model --------------------------------------------------------------------------------


def test_train_demo_bpe_is_deterministic_and_fast(tmp_path: Path, demo_bpe: Path) -> None:
    started = time.perf_counter()
    again = train_demo_bpe(tmp_path / "sub" / "other.model", DEMO_VOCAB_SIZE)
    assert time.perf_counter() - started < 3.0
    assert again.read_bytes() == demo_bpe.read_bytes()


@pytest.mark.parametrize("vocab_size", [256, DEMO_VOCAB_SIZE])
def test_demo_bpe_uses_the_official_special_ids(tmp_path: Path, vocab_size: int) -> None:
    path = train_demo_bpe(tmp_path / "bpe.model", vocab_size)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert sp.get_piece_size() == vocab_size
    assert [sp.id_to_piece(i) for i in range(3)] == ["<s>", "</s>", "<unk>"]
    assert (sp.bos_id(), sp.eos_id(), sp.unk_id(), sp.pad_id()) == (0, 1, 2, -1)
    frontend = TextFrontend(path)
    assert frontend.vocab_size == vocab_size
    ids = frontend.encode("The quick brown fox jumps over the lazy dog.")
    assert all(2 < token_id < vocab_size for token_id in ids)


def test_frontend_rejects_a_model_whose_ids_0_and_1_are_ordinary_pieces(tmp_path: Path) -> None:
    # SentencePiece's default layout puts <unk> at 0 and <s> at 1: the GPT would take them for
    # start/stop text tokens.
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["HELLO WORLD", "GOOD MORNING"] * 5),
        model_writer=writer,
        model_type="bpe",
        vocab_size=30,
        num_threads=1,
        minloglevel=2,
    )
    path = tmp_path / "default_layout.model"
    path.write_bytes(writer.getvalue())
    with pytest.raises(TextError, match="id 0 must be a control piece"):
        TextFrontend(path)


def test_frontend_names_a_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.model"):
        TextFrontend(tmp_path / "missing.model")


def test_train_demo_bpe_rejects_a_tiny_vocabulary(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_demo_bpe(tmp_path / "bpe.model", 10)
