"""Property-based tests: corpus readers, the tokenizer round trip and translation on arbitrary Unicode."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SRC_WORDS, toy_pairs
from nmt import Translator
from nmt.config import load_config
from nmt.data import read_corpus, read_lines
from nmt.tokenizer import UNK_ID, prepare_tokenizer

# Any character that UTF-8 can encode (no lone surrogates): controls, emoji, right-to-left text ...
ANY_CHAR = st.characters(blacklist_categories=("Cs",))
LINE = st.text(ANY_CHAR.filter(lambda c: c not in "\n\r"), max_size=200)
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(lines=st.lists(LINE, max_size=20), bom=st.booleans(), crlf=st.booleans())
def test_read_lines_round_trip(lines: list[str], bom: bool, crlf: bool) -> None:
    ending = "\r\n" if crlf else "\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.txt"
        path.write_bytes(("\ufeff" if bom else "").encode() + "".join(l + ending for l in lines).encode("utf-8"))
        assert read_lines(path) == lines


@FUZZ
@given(pairs=st.lists(st.tuples(LINE, LINE), max_size=15))
def test_jsonl_and_tsv_round_trip(pairs: list[tuple[str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = Path(tmp) / "c.jsonl"
        jsonl.write_text("".join(json.dumps({"src": s, "tgt": t}) + "\n" for s, t in pairs), encoding="utf-8")
        assert read_corpus(str(jsonl), "en", "de") == ([s for s, _ in pairs], [t for _, t in pairs])
        clean = [(s.replace("\t", " "), t.replace("\t", " ")) for s, t in pairs]
        tsv = Path(tmp) / "c.tsv"
        tsv.write_text("".join(f"{s}\t{t}\n" for s, t in clean), encoding="utf-8")
        assert read_corpus(str(tsv), "en", "de") == ([s for s, _ in clean], [t for _, t in clean])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    config = load_config(None, ["tokenizer.vocab_size=60"])
    return prepare_tokenizer(config.tokenizer, tmp_path_factory.mktemp("spm"), *toy_pairs(300))


@FUZZ
@given(text=st.text(ANY_CHAR, max_size=300))
def test_tokenizer_never_crashes_and_is_stable(tokenizer, text: str) -> None:
    ids = tokenizer.encode_src([text])[0]
    assert all(0 <= i < tokenizer.src_vocab_size for i in ids)
    once = tokenizer.decode_tgt([ids])[0]
    assert isinstance(once, str) and "\n" not in once
    if UNK_ID not in ids:  # unknown characters come back as a placeholder; everything else is stable
        assert tokenizer.decode_tgt(tokenizer.encode_src([once]))[0] == once


@FUZZ
@given(words=st.lists(st.sampled_from(SRC_WORDS), min_size=1, max_size=12), spaces=st.sampled_from([" ", "  ", "\t"]))
def test_tokenizer_round_trip_on_known_text(tokenizer, words: list[str], spaces: str) -> None:
    text = spaces.join(words)
    assert tokenizer.decode_tgt(tokenizer.encode_src([text]))[0] == " ".join(words)


@pytest.fixture(scope="module")
def translator(untrained_model: Path) -> Translator:
    return Translator.load(untrained_model, device="cpu")


@FUZZ
@given(lines=st.lists(st.one_of(LINE, st.text(ANY_CHAR.filter(lambda c: c not in "\n\r"), min_size=500, max_size=2000)),
                      max_size=6))
def test_translate_arbitrary_unicode(translator: Translator, lines: list[str]) -> None:
    out = translator.translate(lines, beam=2)
    assert len(out) == len(lines)
    assert all("\n" not in line for line in out)
    assert all(o == "" for o, i in zip(out, lines) if not i.strip())
