"""Corpus readers, cleaning, the tokenized-data cache and token-budget batching."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import datasets
import pytest

from conftest import toy_pairs, write_pair
from nmt.config import load_config
from nmt.data import CleanStats, clean_text_pairs, collate, make_batches, read_corpus, read_lines, tokenize_corpus
from nmt.errors import DataError
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID, prepare_tokenizer


def test_read_lines_handles_bom_crlf_and_gzip(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeffeins\r\nzwei\r\n\r\ndrei\u2028x\n".encode("utf-8"))
    assert read_lines(path) == ["eins", "zwei", "", "drei\u2028x"]
    gz = tmp_path / "b.txt.gz"
    gz.write_bytes(gzip.compress("a\nb\n".encode()))
    assert read_lines(gz) == ["a", "b"]


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.en"
    path.write_bytes(b"fine\nalso fine\nbroken \xff here\n")
    with pytest.raises(DataError, match=r"bad.en:3: invalid UTF-8"):
        read_lines(path)


def test_parallel_files(tmp_path: Path) -> None:
    prefix = write_pair(tmp_path / "train", ["a b", "c"], ["A B", "C"], "en", "de")
    assert read_corpus(str(prefix), "en", "de") == (["a b", "c"], ["A B", "C"])
    (tmp_path / "train.de").write_text("A B\n")
    with pytest.raises(DataError, match="train.en has 2 lines but .*train.de has 1"):
        read_corpus(str(prefix), "en", "de")
    with pytest.raises(DataError, match="corpus not found"):
        read_corpus(str(tmp_path / "nothing"), "en", "de")


def test_gzipped_pair(tmp_path: Path) -> None:
    for lang, text in (("en", "a\nb\n"), ("de", "A\nB\n")):
        (tmp_path / f"train.{lang}.gz").write_bytes(gzip.compress(text.encode()))
    assert read_corpus(str(tmp_path / "train"), "en", "de") == (["a", "b"], ["A", "B"])


def test_tsv_and_jsonl(tmp_path: Path) -> None:
    tsv = tmp_path / "c.tsv"
    tsv.write_text("a\tA\nb\tB\n")
    assert read_corpus(str(tsv), "en", "de") == (["a", "b"], ["A", "B"])
    tsv.write_text("a\tA\nb\n")
    with pytest.raises(DataError, match="c.tsv:2: expected 2 tab-separated columns"):
        read_corpus(str(tsv), "en", "de")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps({"src": "a", "tgt": "A"}) + "\n" + json.dumps({"translation": {"en": "b", "de": "B"}}) + "\n")
    assert read_corpus(str(jsonl), "en", "de") == (["a", "b"], ["A", "B"])
    jsonl.write_text('{"translation": {"en": "b"}}\n')
    with pytest.raises(DataError, match="c.jsonl:1"):
        read_corpus(str(jsonl), "en", "de")


def test_saved_dataset(tmp_path: Path) -> None:
    rows = {"translation": [{"en": "a", "de": "A"}, {"en": "b", "de": "B"}]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "ds"))
    assert read_corpus(str(tmp_path / "ds"), "en", "de", "train") == (["a", "b"], ["A", "B"])
    with pytest.raises(DataError, match="no split 'test'"):
        read_corpus(str(tmp_path / "ds"), "en", "de", "test")
    with pytest.raises(DataError, match="no language"):
        read_corpus(str(tmp_path / "ds"), "en", "fr", "train")


def test_cleaning_counts() -> None:
    stats = CleanStats()
    src, tgt = clean_text_pairs([" a ", "", "b", "a", "c"], ["A", "X", " ", "A", "C"], dedup=True, stats=stats)
    assert (src, tgt) == (["a", "c"], ["A", "C"])
    assert (stats.empty, stats.duplicate) == (2, 1)


def test_tokenize_filters_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(None, ["tokenizer.vocab_size=60", "data.max_tokens_per_side=12", "data.max_length_ratio=2.5"])
    src, tgt = toy_pairs(200)
    src += ["ka " * 30, "ka"]  # far too long; length ratio far too high
    tgt += ["Haus " * 30, "Haus Haus Haus Haus Haus Haus Haus Haus"]
    tokenizer = prepare_tokenizer(config.tokenizer, tmp_path, src, tgt)
    first = tokenize_corpus(src, tgt, tokenizer, config.data, "toy")
    assert first.stats.too_long >= 1 and first.stats.bad_ratio >= 1
    assert first.stats.kept == len(first.src) < 202
    monkeypatch.setattr(type(tokenizer), "encode_src", lambda *a: pytest.fail("re-tokenized despite the cache"))
    second = tokenize_corpus(src, tgt, tokenizer, config.data, "toy")
    assert second.src == first.src and second.tgt == first.tgt and second.stats == first.stats


def test_empty_after_cleaning(tmp_path: Path) -> None:
    config = load_config(None, ["tokenizer.vocab_size=30"])
    tokenizer = prepare_tokenizer(config.tokenizer, tmp_path, ["a b c d"], ["e f g h"])
    with pytest.raises(DataError, match="no training pairs left after cleaning"):
        tokenize_corpus(["", "x"], ["y", " "], tokenizer, config.data, "empty.tsv")


def test_batches_respect_budget_and_cover_everything() -> None:
    src_lengths = [3, 10, 7, 1, 25, 8, 8, 2, 14, 9] * 20
    tgt_lengths = [4, 9, 6, 2, 30, 7, 9, 3, 12, 8] * 20
    batches = make_batches(src_lengths, tgt_lengths, max_tokens=120, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        assert len(b) == 1 or len(b) * (max(src_lengths[i] for i in b) + 1 + max(tgt_lengths[i] for i in b) + 1) <= 120
    assert make_batches(src_lengths, tgt_lengths, 120, 1, 0) == batches
    assert make_batches(src_lengths, tgt_lengths, 120, 1, 1) != batches


def test_batches_pad_little_when_target_lengths_vary() -> None:
    # Target lengths scatter around the source's, as in real pairs. Sorted by source length alone
    # these batches are 89.7% real tokens; sorted by the longer side first, 92.2%.
    rng = random.Random(0)
    src_lengths = [rng.randint(5, 30) for _ in range(3000)]
    tgt_lengths = [max(1, s + rng.randint(-6, 6)) for s in src_lengths]
    batches = make_batches(src_lengths, tgt_lengths, max_tokens=2000, seed=1, epoch=0)
    real = sum(src_lengths[i] + tgt_lengths[i] + 2 for b in batches for i in b)
    padded = sum(len(b) * (max(src_lengths[i] for i in b) + max(tgt_lengths[i] for i in b) + 2) for b in batches)
    assert real / padded > 0.91


def test_collate_adds_specials() -> None:
    x = collate([[5, 6], [7]], [[8], [9, 10]], start_id=BOS_ID)
    assert x["src"].tolist() == [[5, 6, EOS_ID], [7, EOS_ID, PAD_ID]]
    assert x["tgt_in"].tolist() == [[BOS_ID, 8, PAD_ID], [BOS_ID, 9, 10]]
    assert x["tgt_out"].tolist() == [[8, EOS_ID, PAD_ID], [9, 10, EOS_ID]]
    assert x["tgt_out"].view(-1)[x["targets"]].tolist() == [8, EOS_ID, 9, 10, EOS_ID]
