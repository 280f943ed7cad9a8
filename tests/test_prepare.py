"""Preparing corpora into memory-mapped token stores: cleaning counts, the cache, parallel tokenizing,
interrupted and failed preparation, several weighted corpora, and the tokenizer's sample."""

from __future__ import annotations

import errno
import logging
from dataclasses import replace
from pathlib import Path

import datasets
import numpy as np
import pytest

from conftest import toy_pairs, write_pair
from nmt import hub, pipeline
from nmt.config import load_config
from nmt.data import Preparation, TokenStore, collate, prepare_corpora
from nmt.data import prepare as prepare_module
from nmt.data import reading
from nmt.data.store import StoreWriter, id_dtype
from nmt.errors import DataError
from nmt.tokenizer import Tokenizer, prepare_tokenizer


def _setup(tmp_path: Path, src: list[str], tgt: list[str], *overrides: str):
    prefix = write_pair(tmp_path / "corpus" / "train", src, tgt, "en", "de")
    config = load_config(None, ["tokenizer.vocab_size=60", f"data.train={prefix}", *overrides])
    tokenizer = prepare_tokenizer(config.tokenizer, tmp_path / "spm", *toy_pairs(300))
    return config, tokenizer, prefix


def _pairs(data) -> list[tuple[list[int], list[int]]]:
    return [data.pair(row) for row in range(len(data))]


def test_cleaning_filters_and_the_store_holds_the_tokens(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src, tgt = toy_pairs(200)
    src += ["ka " * 30, "ka", " ka lu ", "", "mi", "ka lu"]
    tgt += ["Haus " * 30, "Haus Haus Haus Haus Haus Haus Haus Haus", "Baum Haus", "Hund", " ", "Baum Haus"]
    config, tokenizer, _ = _setup(tmp_path, src, tgt, "data.max_tokens_per_side=12", "data.max_length_ratio=2.5")
    with caplog.at_level(logging.INFO):
        data = prepare_corpora(config.data, tokenizer)
    stats = data.stats[0]
    assert (stats.read, stats.empty) == (206, 2)
    assert stats.duplicate >= 1  # " ka lu " strips to the pair of the last line
    assert stats.too_long >= 1 and stats.bad_ratio >= 1
    assert stats.kept == len(data) == 206 - stats.empty - stats.duplicate - stats.too_long - stats.bad_ratio
    assert "read 206 pairs" in caplog.text
    # The store holds exactly the tokens of the kept pairs, in corpus order.
    kept, seen = [], set()
    for s, t in zip(src, tgt):
        s, t = s.strip(), t.strip()
        if not s or not t or (s, t) in seen:
            continue
        seen.add((s, t))
        ids = tokenizer.encode_src([s])[0], tokenizer.encode_tgt([t])[0]
        if max(map(len, ids)) <= 12 and max(map(len, ids)) <= 2.5 * max(1, min(map(len, ids))):
            kept.append(ids)
    assert _pairs(data) == kept
    assert data.stores[0].dtype == np.uint16


def test_batches_gathered_from_the_store_equal_collated_lists(tmp_path: Path) -> None:
    config, tokenizer, _ = _setup(tmp_path, *toy_pairs(300))
    data = prepare_corpora(config.data, tokenizer)
    batches = data.epoch(300, seed=1, epoch=0)
    assert sorted(np.concatenate([batches[i] for i in range(len(batches))]).tolist()) == list(range(len(data)))
    for index in (0, len(batches) // 2, len(batches) - 1):
        rows = batches[index]
        expected = collate(*zip(*(data.pair(r) for r in rows)), start_id=0)
        found = data.collate(rows, start_id=0)
        assert all(found[k].tolist() == expected[k].tolist() for k in expected)
    again = prepare_corpora(config.data, tokenizer).epoch(300, seed=1, epoch=0)
    assert all(np.array_equal(again[i], batches[i]) for i in range(len(batches)))  # exact resume needs this
    assert not all(np.array_equal(a, b) for a, b in zip(data.epoch(300, 1, 1), batches))


def test_ids_of_a_large_vocabulary_take_32_bits(tmp_path: Path) -> None:
    assert id_dtype(65_536) == np.uint16 and id_dtype(65_537) == np.uint32
    with StoreWriter(tmp_path / "t.arrow", id_dtype(100_000)) as writer:
        writer.write([[5, 99_999], [70_000]], [[1], [65_536, 2, 3]])
        writer.write([[4]], [[8, 9]])
    store = TokenStore(tmp_path / "t.arrow")
    assert store.rows == 3 and store.dtype == np.uint32
    assert [store.row("src", i) for i in range(3)] == [[5, 99_999], [70_000], [4]]
    assert [store.row("tgt", i) for i in range(3)] == [[1], [65_536, 2, 3], [8, 9]]
    assert store.lengths["tgt"].tolist() == [1, 3, 2]


def test_the_cache_is_used_and_keyed_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, tgt = toy_pairs(200)
    config, tokenizer, prefix = _setup(tmp_path, src, tgt)
    first = _pairs(prepare_corpora(config.data, tokenizer))
    with monkeypatch.context() as patch:
        patch.setattr(Tokenizer, "encode_src", lambda *a, **k: pytest.fail("tokenized again despite the cache"))
        patch.setattr(reading.HashMemo, "_save", lambda self: None)
        Path(f"{prefix}.en").touch()  # a new modification time: hashed again, same content, same entry
        assert _pairs(prepare_corpora(config.data, tokenizer)) == first
    write_pair(prefix, src[:150], tgt[:150], "en", "de")  # other content: prepared anew
    assert len(prepare_corpora(config.data, tokenizer)) < len(first)
    other = replace(config.data, max_tokens_per_side=5)  # other filters: prepared anew
    assert len(prepare_corpora(other, tokenizer)) < len(prepare_corpora(config.data, tokenizer))


def test_parallel_tokenizing_gives_the_same_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reading, "CHUNK_PAIRS", 50)
    monkeypatch.setattr(prepare_module, "TASK_BATCHES", 2)  # 8 chunks of 50 pairs: 4 tasks
    config, tokenizer, _ = _setup(tmp_path, *toy_pairs(400))
    serial = _pairs(prepare_corpora(replace(config.data, workers=1, cache_dir=str(tmp_path / "one")), tokenizer))
    parallel = prepare_corpora(replace(config.data, workers=2, cache_dir=str(tmp_path / "two")), tokenizer)
    assert len(parallel.stores[0]._first_rows) == 9  # record batches from 4 part files, in order
    assert _pairs(parallel) == serial


def _cache_entries(root: Path) -> list[Path]:
    return [p for p in (root / "prepared").glob("*")] if (root / "prepared").exists() else []


def test_an_interrupted_preparation_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reading, "CHUNK_PAIRS", 50)
    monkeypatch.setattr(prepare_module, "TASK_BATCHES", 1)
    config, tokenizer, _ = _setup(tmp_path, *toy_pairs(300), f"data.cache_dir={tmp_path / 'cache'}")
    calls = []
    real = prepare_module._tokenize_task

    def stop_in_the_middle(task):
        calls.append(task)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(prepare_module, "_tokenize_task", stop_in_the_middle)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpora(replace(config.data, workers=1), tokenizer)
    cache = tmp_path / "cache"
    assert _cache_entries(cache) == [] and not any((cache / "tmp").iterdir())
    monkeypatch.setattr(prepare_module, "_tokenize_task", real)
    assert len(prepare_corpora(config.data, tokenizer)) > 0 and len(_cache_entries(cache)) == 1


def test_a_full_disk_ends_in_one_line_and_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, tokenizer, _ = _setup(tmp_path, *toy_pairs(100), f"data.cache_dir={tmp_path / 'cache'}")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(StoreWriter, "write", full)
    with pytest.raises(DataError, match="no space left on the device while preparing .*data.cache_dir"):
        prepare_corpora(config.data, tokenizer)
    assert _cache_entries(tmp_path / "cache") == [] and not any((tmp_path / "cache" / "tmp").iterdir())


def test_several_corpora_with_weights(tmp_path: Path) -> None:
    src, tgt = toy_pairs(300)
    big = write_pair(tmp_path / "big" / "train", src[:200], tgt[:200], "en", "de")
    small = write_pair(tmp_path / "small" / "train", src[200:], tgt[200:], "en", "de")
    config = load_config(None, ["tokenizer.vocab_size=60", f"data.train=[{big}, {{path: {small}, weight: 2.5}}]"])
    tokenizer = prepare_tokenizer(config.tokenizer, tmp_path / "spm", src, tgt)
    data = prepare_corpora(config.data, tokenizer)
    n_big, n_small = data.sizes
    assert data.names == [str(big), str(small)] and [s.kept for s in data.stats] == data.sizes
    batches = data.epoch(400, seed=3, epoch=0)
    counts = np.bincount(np.concatenate([batches[i] for i in range(len(batches))]), minlength=len(data))
    assert (counts[:n_big] == 1).all()
    assert set(counts[n_big:].tolist()) == {2, 3} and counts[n_big:].sum() == round(2.5 * n_small)
    rows = batches[0]
    expected = collate(*zip(*(data.pair(r) for r in rows)), start_id=0)  # rows of both stores in one batch
    assert data.collate(rows, 0)["tgt_out"].tolist() == expected["tgt_out"].tolist()


def test_tokenizer_from_the_stream_sample_and_its_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, tgt = toy_pairs(300)
    prefix = write_pair(tmp_path / "corpus" / "train", src, tgt, "en", "de")
    config = load_config(None, ["tokenizer.vocab_size=60", f"data.train={prefix}"])
    tokenizer, data, _ = pipeline._prepare_data(config, tmp_path / "run1", resuming=False)
    # A corpus smaller than the sample gives the tokenizer every sentence, as the lists of old did.
    direct = prepare_tokenizer(config.tokenizer, tmp_path / "direct", src, tgt, config.train.seed)
    assert (tmp_path / "run1" / "spm.model").read_bytes() == (direct.files[0]).read_bytes()
    # A new run on the same corpus and settings neither reads the corpus again nor retrains the tokenizer.
    monkeypatch.setattr(Preparation, "sample", lambda *a: pytest.fail("sampled again"))
    again, data2, _ = pipeline._prepare_data(config, tmp_path / "run2", resuming=False)
    assert (tmp_path / "run2" / "spm.model").read_bytes() == (tmp_path / "run1" / "spm.model").read_bytes()
    assert _pairs(data2) == _pairs(data)


def test_a_bounded_sample_trains_the_tokenizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, tgt = toy_pairs(400)
    prefix = write_pair(tmp_path / "corpus" / "train", src, tgt, "en", "de")
    config = load_config(None, ["tokenizer.vocab_size=60", "tokenizer.input_sentence_size=150", f"data.train={prefix}"])
    seen = []
    real = prepare_tokenizer

    def spy(tokenizer_config, directory, src_lines, tgt_lines, *args, **kwargs):
        seen.append((list(src_lines), list(tgt_lines)))
        return real(tokenizer_config, directory, src_lines, tgt_lines, *args, **kwargs)

    monkeypatch.setattr("nmt.tokenizer.prepare_tokenizer", spy)
    pipeline._prepare_data(config, tmp_path / "run", resuming=False)
    (sample_src, sample_tgt), = seen
    assert len(sample_src) + len(sample_tgt) == 150
    assert set(sample_src) <= set(src) and set(sample_tgt) <= set(tgt) and sample_src and sample_tgt


def test_empty_after_cleaning(tmp_path: Path) -> None:
    config, tokenizer, _ = _setup(tmp_path, ["", "x"], ["y", " "])
    with pytest.raises(DataError, match="no training pairs left after cleaning"):
        prepare_corpora(config.data, tokenizer)


def test_saved_and_hub_datasets_are_read_as_streams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, tgt = toy_pairs(150)
    rows = [{"translation": {"en": s, "de": t}} for s, t in zip(src, tgt)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))

    def load_streaming(name: str, config=None, split: str = "", streaming: bool = False):
        assert (name, split, streaming) == ("someone/corpus", "train", True)
        return datasets.IterableDataset.from_generator(lambda: iter(rows))

    monkeypatch.setattr(datasets, "load_dataset", load_streaming)
    monkeypatch.setattr(reading, "_hub_revision", lambda name: "0123abc")
    monkeypatch.setattr(hub, "check_reachable", lambda *args, **kwargs: None)  # no network here
    monkeypatch.setattr(reading, "CHUNK_PAIRS", 40)
    tokenizer = prepare_tokenizer(load_config(None, ["tokenizer.vocab_size=60"]).tokenizer, tmp_path / "spm", src, tgt)
    found = []
    for spec in (str(tmp_path / "saved"), "hub:someone/corpus"):
        config = load_config(None, [f"data.train={spec}"])
        found.append(_pairs(prepare_corpora(config.data, tokenizer)))
    unique = list(dict.fromkeys(zip(src, tgt)))
    assert found[0] == found[1] == [(tokenizer.encode_src([s])[0], tokenizer.encode_tgt([t])[0]) for s, t in unique]
