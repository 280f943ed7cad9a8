"""Corpus readers (whole and chunked), config of several corpora, cleaning helpers and token-budget batching."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import datasets
import numpy as np
import pytest

from conftest import toy_pairs, write_pair
from nmt.config import load_config
from nmt.config import TrainCorpus, to_dict
from nmt.data import LineBlocks, SentenceSample, collate, make_batches, read_corpus, read_lines
from nmt.data import reading
from nmt.data.batching import weighted_rows
from nmt.data.cleaning import first_occurrences, pair_hashes
from nmt.errors import ConfigError
from nmt.errors import DataError
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID


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


def test_invalid_utf8_deep_in_a_file_names_the_line(tmp_path: Path) -> None:
    """Read in small blocks, as a large file is, the line number is still right."""
    path = tmp_path / "big.de.gz"
    path.write_bytes(gzip.compress(b"".join(f"line {i}\n".encode() for i in range(5000)) + b"bad \xc3\x28\n"))
    with pytest.raises(DataError, match=r"big.de.gz:5001: invalid UTF-8"):
        for _ in LineBlocks(path, block_bytes=97):
            pass


@pytest.mark.parametrize("block_bytes", [1, 2, 5, 64, 1 << 22])
def test_blocks_of_any_size_give_the_same_lines(tmp_path: Path, block_bytes: int) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeffeins\r\nzwei\n\nü\u2028ß\r\n\n".encode("utf-8"))
    assert [line for block in LineBlocks(path, block_bytes) for line in block] == ["eins", "zwei", "", "ü\u2028ß", ""]


def test_chunks_do_not_change_what_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, tgt = toy_pairs(50)
    prefix = write_pair(tmp_path / "train", src, tgt, "en", "de")
    (tmp_path / "c.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in zip(src, tgt)))
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"src": s, "tgt": t}) + "\n" for s, t in zip(src, tgt)))
    monkeypatch.setattr(reading, "CHUNK_PAIRS", 7)
    monkeypatch.setattr(reading, "BLOCK_BYTES", 33)
    for spec in (str(prefix), str(tmp_path / "c.tsv"), str(tmp_path / "c.jsonl")):
        chunks = list(reading.open_corpus(spec, "en", "de").chunks())
        assert max(len(s) for s, _ in chunks) == 7
        assert read_corpus(spec, "en", "de") == (src, tgt)
    # A line-count mismatch found only at the end of a long pair of files is still reported with both counts.
    (tmp_path / "train.de").write_text("".join(t + "\n" for t in tgt[:-1]))
    with pytest.raises(DataError, match="train.en has 50 lines but .*train.de has 49"):
        read_corpus(str(prefix), "en", "de")


def test_several_corpora_with_weights_in_the_config(tmp_path: Path) -> None:
    config = load_config(None, ["data.train=[{path: web, weight: 0.5}, clean, {path: 'hub:x/y', weight: 3}]"])
    assert config.data.train == (TrainCorpus("web", 0.5), TrainCorpus("clean"), TrainCorpus("hub:x/y", 3.0))
    assert load_config(None, ["data.train=data/train"]).data.train == (TrainCorpus("data/train"),)
    assert to_dict(load_config(None, ["data.train=data/train"]))["data"]["train"] == "data/train"  # as configs have it
    round_trip = to_dict(config)["data"]["train"]
    assert load_config(None, [f"data.train={json.dumps(round_trip)}"]).data.train == config.data.train
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("data:\n  train:\n    - path: a\n      weight: 2\n    - b\n")
    assert load_config(yaml_file).data.train == (TrainCorpus("a", 2.0), TrainCorpus("b"))
    for bad, message in (("[{path: a, weight: 0}]", "weights must be > 0"), ("[{path: a, wieght: 2}]", "did you mean 'weight'"),
                         ("[{weight: 2}]", "each corpus is a path"), ("[{path: a, weight: lots}]", "expected float")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [f"data.train={bad}"])


def test_duplicates_found_by_their_hash() -> None:
    src = ["a", "b", "a", "a", "c", "b"]
    tgt = ["A", "B", "A", "X", "C", "B"]
    assert first_occurrences(pair_hashes(src, tgt)).tolist() == [True, True, False, True, True, False]
    assert pair_hashes(["a\tb"], ["c"])[0] != pair_hashes(["a"], ["b\tc"])[0]  # no ambiguity of a separator


def test_sentence_sample_is_uniform_bounded_and_in_order() -> None:
    small = SentenceSample(100, seed=1)
    small.add(["a", "", "b"], 0)
    small.add(["x", "y", ""], 1)
    assert small.sentences() == (["a", "b"], ["x", "y"])  # all of a small stream, in order, empty ones left out
    counts = np.zeros(1000)
    for seed in range(200):
        sample = SentenceSample(100, seed)
        for start in range(0, 1000, 37):  # in uneven chunks
            sample.add([str(i) for i in range(start, min(start + 37, 1000))], 0)
        src, tgt = sample.sentences()
        assert len(src) == 100 and not tgt and src == sorted(src, key=int)
        counts[[int(x) for x in src]] += 1
    # Each sentence is kept with probability 0.1: 20 of 200 samples, give or take the binomial spread.
    assert counts.mean() == 20 and counts.min() >= 5 and counts.max() <= 38
    assert counts[:500].sum() == pytest.approx(counts[500:].sum(), rel=0.05)
    again = SentenceSample(100, 7)
    again.add([str(i) for i in range(1000)], 0)
    once = SentenceSample(100, 7)
    for start in range(0, 1000, 10):
        once.add([str(i) for i in range(start, start + 10)], 0)
    assert again.sentences() == once.sentences()  # chunking does not change the sample


def test_weighted_rows() -> None:
    counts = np.bincount(weighted_rows([10, 4, 6], [1.0, 2.0, 0.5], np.random.default_rng(0)), minlength=20)
    assert counts[:10].tolist() == [1] * 10 and counts[10:14].tolist() == [2] * 4
    assert (counts[14:] <= 1).all() and counts[14:].sum() == 3  # half of the third corpus
    halves = {tuple(np.sort(weighted_rows([10], [0.5], np.random.default_rng(seed)))) for seed in range(10)}
    assert len(halves) > 1  # a different half each epoch


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
