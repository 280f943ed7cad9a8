"""Preparing training corpora, cached: read and clean them as a stream into a text file (stage one, which
also samples sentences for training a tokenizer), then tokenize that in parallel into a token store
(stage two). Memory stays bounded whatever the corpus size; the cache is only ever complete.

Cache layout under `data.cache_dir` (default $NMT_CACHE or ~/.cache/nmt):
    prepared/KEY/tokens.arrow, meta.json   one store per corpus; KEY hashes the corpus's content, the
                                           tokenizer, the cleaning settings and this format's version
    tokenizers/KEY/                        tokenizers trained on a corpus sample (see nmt.pipeline)
    tmp/HOST-PID-.../                      work in progress, renamed into place when complete
    file-hashes.json                       files' SHA-256 by path, size and time (skips re-reading them)
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from itertools import compress
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from nmt import atomic
from nmt.config import DataConfig
from nmt.data.batching import TrainingData
from nmt.data.cleaning import CleanStats, SentenceSample, first_occurrences, length_verdicts, pair_hashes
from nmt.data.multilingual import LanguageSamples, temperature_shares, temperature_weights
from nmt.data.reading import CorpusSource, HashMemo, open_corpus
from nmt.data.store import StoreWriter, TokenStore, id_dtype, record_batches
from nmt.directions import directions, for_direction
from nmt.errors import DataError
from nmt.tokenizer import Tokenizer

log = logging.getLogger(__name__)

STORE_VERSION = 1  # part of every store's key: a new layout is prepared anew, never misread
TOKENS, META = "tokens.arrow", "meta.json"
TASK_BATCHES = 2  # text record batches (of up to 20,000 pairs) per tokenizing task: small tasks keep every process busy to the end
_TEXT_SCHEMA = pa.schema([("src", pa.string()), ("tgt", pa.string())])


def cache_root(config: DataConfig) -> Path:
    return Path(config.cache_dir or os.environ.get("NMT_CACHE") or Path.home() / ".cache" / "nmt")


def _bar(total: Optional[int], unit: str, desc: str, quiet: bool) -> tqdm:
    scale = unit == "B"
    return tqdm(total=total, unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000, desc=desc,
                dynamic_ncols=True, mininterval=1.0, disable=quiet)


@dataclass
class _Scan:
    """Stage one of a corpus: its stripped pairs without empty sides as text (`path`), which of them are
    the first of their kind (`keep`), and the counts so far."""

    path: Path
    keep: np.ndarray
    stats: CleanStats


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Python's cyclic garbage collector off inside the block, as it was before after it.

    Preparation makes millions of lists of strings and of token ids, none of them in a reference
    cycle, so reference counting frees them all and the collector only rescans them, again and
    again as they pile up: 25% of SentencePiece's encoding time in a tokenizing task of 40,000 pairs.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _scan(corpus: CorpusSource, path: Path, dedup: bool, sample: Optional[Callable[[list[str], list[str]], None]],
          quiet: bool) -> _Scan:
    """Read `corpus` chunk by chunk into the text file `path`: strip, drop empty sides, hash each pair."""
    stats, hashes = CleanStats(), []
    started = time.monotonic()
    with _bar(corpus.total, corpus.unit, f"reading {corpus.spec}", quiet) as bar, pa.OSFile(str(path), "wb") as sink, \
            pa.ipc.new_file(sink, _TEXT_SCHEMA) as writer, _no_cycle_collection():
        for src, tgt in corpus.chunks():
            src, tgt = list(map(str.strip, src)), list(map(str.strip, tgt))
            if sample is not None:
                sample(src, tgt)
            stats.read += len(src)
            full = list(map(all, zip(src, tgt)))  # both sides non-empty
            if not all(full):
                src, tgt = list(compress(src, full)), list(compress(tgt, full))
            stats.empty += len(full) - len(src)
            if dedup:
                hashes.append(pair_hashes(src, tgt))
            writer.write_batch(pa.record_batch([pa.array(src, pa.string()), pa.array(tgt, pa.string())],
                                               schema=_TEXT_SCHEMA))
            bar.update(corpus.done - bar.n)
            bar.set_postfix_str(f"{stats.read / max(time.monotonic() - started, 1e-9):,.0f} pairs/s", refresh=False)
    if stats.read == stats.empty:
        raise DataError(f"{corpus.spec}: no training pairs left after cleaning (read {stats.read:,} pairs, "
                        "each has an empty side)")
    keep = first_occurrences(np.concatenate(hashes)) if hashes else np.ones(stats.read - stats.empty, dtype=bool)
    stats.duplicate = int(len(keep) - keep.sum())
    seconds = time.monotonic() - started
    log.info("read and cleaned %s: %s pairs in %.1f s (%s pairs/s)", corpus.spec, f"{stats.read:,}", seconds,
             f"{stats.read / max(seconds, 1e-9):,.0f}")
    return _Scan(path, keep, stats)


# What a tokenizing worker reads: the text file, its rows' verdicts, the tokenizer and the filters; inherited
# from the parent at fork, so only task numbers go out and part files' names come back.
_job: Optional[tuple[Path, np.ndarray, np.ndarray, Tokenizer, DataConfig, np.dtype, Path]] = None


def _tokenize_task(task: tuple[int, range]) -> tuple[Path, CleanStats, int]:
    """Tokenize the text record batches `task[1]` into a part file; returns it, the counts and the rows done."""
    assert _job is not None
    number, batches = task
    text_path, keep, first_rows, tokenizer, config, dtype, directory = _job
    text = record_batches(text_path)
    stats, done = CleanStats(), 0
    part = directory / f"part{number:07d}.arrow"
    with StoreWriter(part, dtype) as writer, _no_cycle_collection():
        for index in batches:
            batch, kept = text[index], keep[first_rows[index]:first_rows[index + 1]]
            src = list(compress(batch.column(0).to_pylist(), kept))
            tgt = list(compress(batch.column(1).to_pylist(), kept))
            src_ids, tgt_ids = tokenizer.encode_src(src, threads=1), tokenizer.encode_tgt(tgt, threads=1)
            src_lengths = np.fromiter(map(len, src_ids), dtype=np.int64, count=len(src_ids))
            tgt_lengths = np.fromiter(map(len, tgt_ids), dtype=np.int64, count=len(tgt_ids))
            fit = length_verdicts(src_lengths, tgt_lengths, config.max_tokens_per_side, config.max_length_ratio, stats)
            writer.write(list(compress(src_ids, fit)), list(compress(tgt_ids, fit)))
            stats.kept += int(fit.sum())
            done += len(kept)
    return part, stats, done


def _worker_start() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the pool and cleans up


def _tokenize(scan: _Scan, tokenizer: Tokenizer, config: DataConfig, path: Path, workers: int, quiet: bool,
              desc: str) -> CleanStats:
    """Stage two: tokenize `scan`'s first occurrences in `workers` processes into the store `path`, in order."""
    global _job
    batches = record_batches(scan.path)
    first_rows = np.cumsum([0] + [b.num_rows for b in batches])
    tasks = [(n, range(start, min(start + TASK_BATCHES, len(batches))))
             for n, start in enumerate(range(0, len(batches), TASK_BATCHES))]
    dtype = id_dtype(max(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size))
    _job = (scan.path, scan.keep, first_rows, tokenizer, config, dtype, path.parent)
    workers = min(workers, len(tasks))
    if "fork" not in multiprocessing.get_all_start_methods():
        workers = 1  # workers inherit the tokenizer and the text's verdicts by forking
    stats = CleanStats()
    started = time.monotonic()
    try:
        with StoreWriter(path, dtype) as writer, _bar(len(scan.keep), "pairs", desc, quiet) as bar:
            pool = multiprocessing.get_context("fork").Pool(workers, _worker_start) if workers > 1 else None
            try:
                for part, part_stats, done in (pool.imap(_tokenize_task, tasks) if pool else map(_tokenize_task, tasks)):
                    for batch in record_batches(part):
                        writer.write_batch(batch)
                    part.unlink()
                    stats.add(part_stats)
                    bar.update(done)
            finally:
                if pool is not None:
                    pool.terminate()
    finally:
        _job = None
    seconds = time.monotonic() - started
    log.info("%s: %s pairs in %.1f s (%s pairs/s, %d process%s)", desc, f"{len(scan.keep):,}", seconds,
             f"{len(scan.keep) / max(seconds, 1e-9):,.0f}", workers, "" if workers == 1 else "es")
    return stats


class Samples:
    """A uniform sample of a stream's stripped, non-empty sentences (see `SentenceSample`) for training
    tokenizers: of source and target sentences together (`joint`, at most `size` in all) or of each side
    (at most `size` each)."""

    def __init__(self, size: int, seed: int, joint: bool) -> None:
        self.samples = [SentenceSample(size, seed)] if joint else [SentenceSample(size, seed), SentenceSample(size, seed + 1)]

    def offer(self, src: list[str], tgt: list[str]) -> None:
        self.samples[0].add(src, 0)
        self.samples[-1].add(tgt, 1)

    def sentences(self) -> tuple[list[str], list[str]]:
        """(source, target) sentences, each in the order they came."""
        if len(self.samples) == 1:
            return self.samples[0].sentences()
        return self.samples[0].sentences()[0], self.samples[1].sentences()[1]


def sample_corpus(corpus: CorpusSource, size: int, seed: int, joint: bool) -> tuple[list[str], list[str]]:
    """`Samples` of one corpus, read as a stream (for training a tokenizer on its own)."""
    samples = Samples(size, seed, joint)
    for src, tgt in corpus.chunks():
        samples.offer([s.strip() for s in src], [t.strip() for t in tgt])
    return samples.sentences()


class Preparation:
    """The training corpora of a data config on their way into token stores.

    `sample()` reads them (stage one) and returns a sample of their sentences for training a
    tokenizer; `finish(tokenizer)` opens the cached stores, preparing those that are not cached
    yet. Use it as a context manager: work in progress is removed on the way out, whatever happens.

    With data.pairs, every corpus is read once for each direction (its {src} and {tgt} filled in), each
    direction's sources start with its target's tag, and each direction's share of an epoch follows
    data.temperature (`temperature_weights`).
    """

    def __init__(self, config: DataConfig, workers: int = 0, quiet: bool = False) -> None:
        self.config, self.quiet = config, quiet
        self.workers = workers or len(os.sched_getaffinity(0))
        self.root = cache_root(config)
        # Each corpus of data.train once per direction: its entry and its direction.
        self.entries = [(c, pair) for pair in directions(config) for c in config.train]
        self.languages = [pair for _, pair in self.entries]
        self.corpora = [open_corpus(for_direction(c.path, s, t), s, t, config.train_split, config.hub_config)
                        for c, (s, t) in self.entries]
        memo = HashMemo(self.root / "file-hashes.json")
        self.keys = [corpus.content_key(memo) for corpus in self.corpora]
        self.work = self.root / "tmp" / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.scans: dict[int, _Scan] = {}

    def __enter__(self) -> "Preparation":
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    @property
    def key(self) -> str:
        """A hash of the corpora's contents and how they are read (for caching what is derived from them)."""
        return hashlib.sha256("|".join(self.keys).encode()).hexdigest()[:24]

    def sample(self, size: int, seed: int, joint: bool) -> tuple[list[str], list[str]]:
        """Read the corpora (stage one) and return a sample of their sentences (see `Samples`; with several
        directions, `LanguageSamples`: a share for each language by data.temperature)."""
        samples: Samples | LanguageSamples = (LanguageSamples(size, seed, self.config.temperature)
                                              if self.config.pairs else Samples(size, seed, joint))
        offered: set[tuple[str, str]] = set()  # (language, file or corpus): each side sampled once
        for index, corpus in enumerate(self.corpora):
            offer = samples.offer
            if isinstance(samples, LanguageSamples):
                sides = [(lang, str(corpus.paths[side]) if corpus.kind == "pair" else f"{corpus.spec}|{side}")
                         for side, lang in enumerate(self.languages[index])]
                new = [side not in offered for side in sides]
                offered.update(sides)
                def offer(src: list[str], tgt: list[str], sides=sides, new=new) -> None:
                    for lines, (lang, _), fresh in zip((src, tgt), sides, new):
                        if fresh:
                            samples.offer(lines, lang)
            self.scans[index] = self._guard(corpus, lambda: self._scan(index, offer))
        return samples.sentences()

    def finish(self, tokenizer: Tokenizer) -> TrainingData:
        """The corpora's token stores: opened from the cache, or prepared (and cached) first. `tokenizer`
        carries the one pair's tags; with data.pairs each direction's are taken from it."""
        files = hashlib.sha256()
        for file in tokenizer.files:
            files.update(file.read_bytes())
        c = self.config
        stores, stats, names = [], [], []
        for index, corpus in enumerate(self.corpora):
            own = tokenizer.for_languages(*self.languages[index]) if c.pairs else tokenizer
            digest = files.copy()
            if own.src_prefix or own.tgt_prefix:  # language tags the ids start with
                digest.update(f"tags {list(own.src_prefix)} {list(own.tgt_prefix)}".encode())
            key = hashlib.sha256(f"v{STORE_VERSION}|{self.keys[index]}|{digest.hexdigest()}|{c.max_tokens_per_side}|"
                                 f"{c.max_length_ratio}|{c.dedup}".encode()).hexdigest()[:24]
            final = self.root / "prepared" / key
            cached = (final / META).is_file()
            if not cached:
                self._guard(corpus, lambda: self._build(index, own, final))
            counts = CleanStats(**json.loads((final / META).read_text(encoding="utf-8"))["stats"])
            names.append(f"{corpus.spec} ({'-'.join(self.languages[index])})" if c.pairs else corpus.spec)
            log.info("training corpus %s: %s%s", names[-1], counts.summary(), " (prepared earlier)" if cached else "")
            stores.append(TokenStore(final / TOKENS))
            stats.append(counts)
        return TrainingData(stores, names, self._weights([store.rows for store in stores]), stats)

    def _weights(self, rows: list[int]) -> list[float]:
        """Each corpus's weight: its own (data.train's), times its direction's temperature factor."""
        own = [c.weight for c, _ in self.entries]
        if not self.config.pairs:
            return own
        pairs = directions(self.config)
        sizes = [sum(w * n for w, n, lang in zip(own, rows, self.languages) if lang == pair) for pair in pairs]
        factors = dict(zip(pairs, temperature_weights(sizes, self.config.temperature)))
        shares = temperature_shares(sizes, self.config.temperature)
        log.info("directions' shares of an epoch (data.temperature=%g): %s", self.config.temperature,
                 ", ".join(f"{s}-{t} {100 * share:.1f}%" for (s, t), share in zip(pairs, shares)))
        return [float(w * factors[lang]) for w, lang in zip(own, self.languages)]

    def _scan(self, index: int, sample: Optional[Callable[[list[str], list[str]], None]] = None) -> _Scan:
        self.work.mkdir(parents=True, exist_ok=True)
        corpus = self.corpora[index]
        quiet = self.quiet or (corpus.total is not None and corpus.total < (1 << 24 if corpus.unit == "B" else 100_000))
        return _scan(corpus, self.work / f"text{index}.arrow", self.config.dedup, sample, quiet)

    def _build(self, index: int, tokenizer: Tokenizer, final: Path) -> None:
        scan = self.scans.pop(index, None) or self._scan(index)
        corpus = self.corpora[index]
        building = self.work / final.name
        building.mkdir(parents=True, exist_ok=True)
        quiet = self.quiet or len(scan.keep) < 100_000
        stats = _tokenize(scan, tokenizer, self.config, building / TOKENS, self.workers, quiet, f"tokenizing {corpus.spec}")
        scan.path.unlink()
        stats.read, stats.empty, stats.duplicate = scan.stats.read, scan.stats.empty, scan.stats.duplicate
        if not stats.kept:
            raise DataError(f"{corpus.spec}: no training pairs left after cleaning ({stats.summary()})")
        (building / META).write_text(json.dumps({"corpus": corpus.spec, "stats": asdict(stats)}), encoding="utf-8")
        final.parent.mkdir(parents=True, exist_ok=True)
        # Another process may have finished the same store first; theirs is identical, and kept.
        atomic.publish(building, final, existing="keep")

    def _guard(self, corpus: CorpusSource, action: Callable[[], object]):
        """Run `action`; a full disk or an unwritable cache becomes one line naming the cache."""
        try:
            return action()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DataError(f"{self.root}: no space left on the device while preparing {corpus.spec}; free "
                                "space or point data.cache_dir (or $NMT_CACHE) at a larger disk") from None
            raise DataError(f"{self.root}: cannot write the prepared corpus ({exc.strerror or exc}); "
                            "check data.cache_dir (or $NMT_CACHE)") from None


def prepare_corpora(config: DataConfig, tokenizer: Tokenizer, quiet: bool = False) -> TrainingData:
    """The token stores of `config.train` for a given tokenizer, prepared and cached first where need be."""
    with Preparation(config, config.workers, quiet) as preparation:
        return preparation.finish(tokenizer)


def token_pairs(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], path: Path) -> TrainingData:
    """TrainingData of token-id pairs given in memory, stored (uncleaned) at `path`: for benchmarks and tests."""
    with StoreWriter(path, id_dtype(1 + max((max(s, default=0) for s in (*src, *tgt)), default=0))) as writer:
        writer.write(src, tgt)
    return TrainingData([TokenStore(path)], [str(path)], [1.0], [CleanStats(read=len(src), kept=len(src))])
