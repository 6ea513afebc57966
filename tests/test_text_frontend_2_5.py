"""The IndexTTS-2.5 text front-end (tiktoken vocabulary from the checkpoint, special tokens, language
tags, pronunciation annotations, Japanese segmentation, segment splitting) against the official
outputs in the 2.5 golden set's tokenizer.npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from golden import load_golden, load_golden_config

from indextts2.checkpoint_dir import TIKTOKEN_2_5_FILE
from indextts2.frontend.text_2_5 import (
    LANGUAGE_DICT,
    SERVED_LANGUAGES,
    TextError25,
    TextFrontend25,
    apply_pronunciation_annotations,
    detect_language,
    lang_to_token,
    load_encoding,
    segment_japanese,
)


@pytest.fixture(scope="module")
def golden(golden_tiny_2_5: Path) -> dict[str, np.ndarray]:
    return load_golden(golden_tiny_2_5, "tokenizer")


@pytest.fixture(scope="module")
def frontend(golden_tiny_2_5: Path) -> TextFrontend25:
    config = load_golden_config(golden_tiny_2_5)
    return TextFrontend25(golden_tiny_2_5 / TIKTOKEN_2_5_FILE, max_text_tokens=config["gpt"]["max_text_tokens"])


def test_vocabulary_and_special_token_ids_match_the_official_tokenizer(frontend, golden, golden_tiny_2_5):
    assert frontend.n_vocab == int(golden["n_vocab"])
    for name, token_id in zip(golden["special_names"], golden["special_ids"], strict=True):
        assert frontend.token_id(str(name)) == int(token_id)
    # The GPT's text table holds every id.
    assert frontend.n_vocab <= load_golden_config(golden_tiny_2_5)["gpt"]["number_text_tokens"] + 1


@pytest.mark.parametrize("row", range(6))
def test_text_pipeline_reproduces_the_official_strings_tokens_and_language_rows(frontend, golden, row):
    raw, lang = str(golden["raw_text"][row]), str(golden["lang"][row])
    processed = frontend.process(raw, lang)
    assert f"<|{lang}|> " + processed == str(golden["encoded_text"][row])
    prepared = frontend.prepare_processed(processed, lang, 120)
    length = int(golden["text_token_lengths"][row])
    assert prepared.segments == [golden["text_tokens_padded"][row][:length].tolist()]
    assert prepared.language_id == int(golden["lang_token"][row]) == lang_to_token(lang)
    assert np.all(golden["text_tokens_padded"][row][length:] == -1)


def test_zhen_is_no_special_token_and_maps_to_the_common_row(frontend):
    assert lang_to_token("zhen") == LANGUAGE_DICT["common"]
    assert len(frontend.encode("<|zhen|>")) > 1
    assert frontend.encode("<|zh|>") == [frontend.token_id("<|zh|>")]


def test_pronunciation_annotations_follow_the_official_rules():
    assert apply_pronunciation_annotations("<going|g ow1>") == "<|SPECIAL_TOKEN_1|>G OW1<|SPECIAL_TOKEN_1|>"
    assert apply_pronunciation_annotations("<行|xing2>") == "<|SPECIAL_TOKEN_2|>XING2<|SPECIAL_TOKEN_2|>"
    assert apply_pronunciation_annotations("<今日|きょう>") == " きょう "
    assert apply_pronunciation_annotations("no <tags here") == "no <tags here"


def test_japanese_is_split_into_words_keeping_the_original_spaces():
    assert segment_japanese("こんにちは,世界.") == "こんにちは , 世界 ."
    assert segment_japanese("世界  世界") == "世界  世界"


def test_language_detection_and_request_languages(frontend):
    assert detect_language("你好世界") == "zh"
    assert detect_language("こんにちは世界") == "ja"
    assert detect_language("¿Qué tal, señor?") == "es"
    assert detect_language("Hello world") == "en"
    assert detect_language("مرحبا") == "ar"
    assert detect_language("I say <行|xing2>") == "zh"
    assert frontend.prepare("Hello world.", "auto").language == "en"
    assert frontend.prepare("你好。", "AUTO").language_id == LANGUAGE_DICT["zh"]
    for language in SERVED_LANGUAGES:
        assert frontend.prepare("abc 你好", language).language == language
    with pytest.raises(TextError25, match="not supported"):
        frontend.prepare("Hello", "xx")
    with pytest.raises(TextError25, match="nothing to speak"):
        frontend.prepare(" ... !", "en")


def test_long_text_is_split_within_the_budget_and_never_inside_an_annotation(frontend):
    text = ", ".join(["hello world this is a test"] * 12) + ". I am <going|G OW1 . IH0 NG> home. " * 3
    max_tokens = 20
    prepared = frontend.prepare(text, "en", max_tokens)
    assert len(prepared.segments) > 1
    prefix_len = len(frontend.encode("<|en|> "))
    for segment_text, ids in zip(prepared.segment_texts, prepared.segments, strict=True):
        assert len(frontend.encode(segment_text)) <= max_tokens - prefix_len or len(segment_text) == 1 \
            or "<|SPECIAL_TOKEN_1|>" in segment_text
        assert ids[0] == frontend.token_id("<|en|>") and ids[-1] == 1
        assert segment_text.count("<|SPECIAL_TOKEN_1|>") % 2 == 0
    assert "".join(prepared.segment_texts) == prepared.text


def test_the_encoding_is_built_from_the_file_without_any_download(golden_tiny_2_5, monkeypatch):
    import tiktoken.load

    def no_download(*args, **kwargs):
        raise AssertionError("tiktoken tried to fetch a file")

    monkeypatch.setattr(tiktoken.load, "read_file", no_download)
    monkeypatch.setattr(tiktoken.load, "read_file_cached", no_download)
    load_encoding.cache_clear()
    try:
        encoding = load_encoding(golden_tiny_2_5 / TIKTOKEN_2_5_FILE)
        assert encoding.encode("<|en|> hello", allowed_special="all")[0] == encoding.encode_single_token("<|en|>")
    finally:
        load_encoding.cache_clear()


def test_a_missing_or_malformed_vocabulary_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        TextFrontend25(tmp_path / "missing.tiktoken")
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("not base64!! 0\n")
    with pytest.raises(TextError25, match="bad.tiktoken:1"):
        TextFrontend25(bad)
