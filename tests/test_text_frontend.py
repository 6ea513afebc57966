"""Text front-end: normalisation, bpe encoding, segment splitting and the demo bpe.model."""

import io
import time
from pathlib import Path

import pytest
import sentencepiece as spm

from indextts2.frontend.text import (
    TextError,
    TextFrontend,
    chinese_integer,
    english_integer,
    normalize_text,
    split_pieces,
    train_demo_bpe,
)

DEMO_VOCAB_SIZE = 1024  # large enough for every character of the demo corpus

LONG_TEXT = (
    "The quick brown fox jumps over the lazy dog. Good morning, everyone! Thank you for coming today. "
    "Reading a good book is the best way to spend a rainy evening, and music has the power to bring "
    "people together. 今天天气很好，我们一起去公园散步吧。你好，很高兴认识你！"
    "学习一门新的语言需要时间和耐心。"
    "He whispered, \"Don't be afraid; I'm right here.\" The results will be announced next Monday. "
    "这个模型能用自然的语气说中文和英文，每个句子的结尾都应该有一个自然的停顿。"
) * 4


@pytest.fixture(scope="module")
def demo_bpe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_demo_bpe(tmp_path_factory.mktemp("bpe") / "bpe.model", DEMO_VOCAB_SIZE)


@pytest.fixture(scope="module")
def frontend(demo_bpe: Path) -> TextFrontend:
    return TextFrontend(demo_bpe)


# --- normalisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("“我爱你”的英语是“I love you”", "' 我 爱 你 ' 的 英 语 是 'I LOVE YOU'"),
        ("他说：明天（周一）见；好吗？", "他 说 , 明 天 ' 周 一 ' 见 , 好 吗 ?"),
        ("《红楼梦》、【注】「好」。", "' 红 楼 梦 ',' 注 '' 好 '."),
        ("克里斯托弗·诺兰——导演～", "克 里 斯 托 弗 - 诺 兰 -- 导 演 -"),
        ('Wait: (really) [yes]; "ok" ~ fine', "WAIT, 'REALLY' 'YES', 'OK' - FINE"),
        ("这酒...里……有毒。。。", "这 酒 … 里 … 有 毒 …"),
        ("只有,,,才是最好的", "只 有 … 才 是 最 好 的"),
    ],
)
def test_punctuation_maps_to_the_official_set(text: str, expected: str) -> None:
    assert normalize_text(text) == expected


def test_whitespace_is_collapsed_and_stripped() -> None:
    assert normalize_text("  hello \t\n  world\r\n ") == "HELLO WORLD"
    assert normalize_text("你好\u3000 世界\n") == "你 好 世 界"


def test_cjk_characters_are_split_and_the_rest_upper_cased() -> None:
    # Example from the official tokenize_by_CJK_char docstring.
    assert normalize_text("你好世界是 hello world 的中文") == "你 好 世 界 是 HELLO WORLD 的 中 文"
    assert normalize_text("Hello, World!") == "HELLO, WORLD!"


def test_full_width_forms_are_folded_by_nfkc() -> None:
    assert normalize_text("Ｈｅｌｌｏ\u3000ｗｏｒｌｄ！") == "HELLO WORLD!"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("There are 365 days.", "THERE ARE THREE HUNDRED AND SIXTY FIVE DAYS."),
        (
            "Only 2.5% off, $139.99!",
            "ONLY TWO POINT FIVE PERCENT OFF, ONE HUNDRED AND THIRTY NINE DOLLARS AND NINETY NINE CENTS!",
        ),
        ("The 21st century, at 8:05.", "THE TWENTY FIRST CENTURY, AT EIGHT OH FIVE."),
        ("F5-TTS and CosyVoice2", "F FIVE-TTS AND COSYVOICE TWO"),
        ("Call 12345678901", "CALL ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE ZERO ONE"),
        ("共465篇，约315万字", "共 四 百 六 十 五 篇 , 约 三 百 一 十 五 万 字"),
        ("2002年的第一场雪", "二 零 零 二 年 的 第 一 场 雪"),
        ("效果1.0版本，百分比50%", "效 果 一 点 零 版 本 , 百 分 比 百 分 之 五 十"),
        ("2025/09/08 发布，20:30开始", "二 零 二 五 年 九 月 八 日 发 布 , 二 十 点 三 十 分 开 始"),
    ],
)
def test_numbers_are_spelt_out_in_the_text_language(text: str, expected: str) -> None:
    assert normalize_text(text) == expected


def test_integer_readings() -> None:
    numbers = ("0", "10", "15", "1005", "1050", "20000", "100010", "123456789")
    assert [chinese_integer(n) for n in numbers] == [
        "零", "十", "十五", "一千零五", "一千零五十", "二万", "十万零一十",
        "一亿二千三百四十五万六千七百八十九",
    ]  # fmt: skip
    assert english_integer("1000005") == "one million five"
    assert english_integer("115") == "one hundred and fifteen"


def test_pinyin_tones_are_kept_and_jqx_u_becomes_v() -> None:
    assert normalize_text("不zuo1死就不会死") == "不 ZUO1 死 就 不 会 死"
    assert normalize_text("这个字读jue2，不读que4") == "这 个 字 读 JVE2, 不 读 QVE4"
    # beta1 is not pinyin, so its digit is read as a number.
    assert normalize_text("用beta1测试") == "用 BETA 一 测 试"


def test_common_contractions_are_expanded() -> None:
    assert (
        normalize_text("where's the money? It’s here, Tom's bag.")
        == "WHERE IS THE MONEY? IT IS HERE, TOM'S BAG."
    )


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
