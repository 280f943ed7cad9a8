"""SentencePiece tokenizers: train, load, encode and decode, joint or separate vocabularies."""

from __future__ import annotations

import io
import logging
import random
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import sentencepiece as spm
from tqdm import tqdm

from nmt import atomic
from nmt.config import TokenizerConfig
from nmt.errors import CheckpointError, DataError

# Fixed special ids, the same in every vocabulary this toolkit trains.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

JOINT_FILE = "spm.model"
SRC_FILE = "spm.src.model"
TGT_FILE = "spm.tgt.model"

log = logging.getLogger(__name__)


def train_sentencepiece(sentences: Sequence[str], output: Path, config: TokenizerConfig, seed: int = 1) -> Path:
    """Train one SentencePiece model on `sentences` and write it to `output` (atomically)."""
    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise DataError(f"cannot train a tokenizer for {output.name}: no non-empty sentences")
    if len(sentences) > config.input_sentence_size:
        sentences = random.Random(seed).sample(sentences, config.input_sentence_size)
    log.info("training the %s tokenizer (%s, %d pieces) on %s sentences", output.name, config.type,
             config.vocab_size, f"{len(sentences):,}")
    started = time.monotonic()
    buffer = io.BytesIO()
    try:
        with _Elapsed(f"training tokenizer on {len(sentences):,} sentences", quiet=len(sentences) < 100_000):
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_writer=buffer,
                model_type=config.type,
                vocab_size=config.vocab_size,
                character_coverage=config.character_coverage,
                pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
                hard_vocab_limit=False,  # small corpora may not support the requested size
                minloglevel=2,
                # The trained model depends on the thread count (Multi30k en+de, 8,000 pieces: three
                # different models from 1, 2 and 4 threads), so it is fixed, not the machine's core count:
                # the same data and config give the same tokenizer everywhere.
                num_threads=2,
            )
    except RuntimeError as exc:
        raise DataError(f"tokenizer training for {output.name} failed: {exc}") from None
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(output, buffer.getvalue())
    log.info("trained %s in %.0f s", output.name, time.monotonic() - started)
    return output


class _Elapsed:
    """A progress line for work that reports no progress of its own (SentencePiece training): the time so far,
    from a thread, since the training releases the GIL."""

    def __init__(self, desc: str, quiet: bool) -> None:
        self.bar = tqdm(desc=desc, bar_format="{desc}: {elapsed} elapsed", disable=quiet)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._tick, daemon=True)

    def _tick(self) -> None:
        while not self.stop.wait(1.0):
            self.bar.refresh()

    def __enter__(self) -> "_Elapsed":
        if not self.bar.disable:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        self.bar.close()


def _load_processor(path: Path) -> spm.SentencePieceProcessor:
    if not path.is_file():
        raise CheckpointError(f"{path}: tokenizer model not found (train one with `nmt tokenizer train` or `nmt train`)")
    try:
        processor = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"{path}: not a SentencePiece model ({exc})") from None
    ids = (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id())
    if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
        raise CheckpointError(f"{path}: special ids (pad, unk, bos, eos) are {ids}, expected {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}")
    return processor


@dataclass
class Tokenizer:
    """Source and target SentencePiece processors (the same object when the vocabulary is joint)."""

    src: spm.SentencePieceProcessor
    tgt: spm.SentencePieceProcessor
    files: tuple[Path, ...]

    @property
    def joint(self) -> bool:
        return self.src is self.tgt

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.get_piece_size()

    def encode_src(self, lines: Iterable[str], threads: int = -1) -> list[list[int]]:
        """Token ids of each line; `threads` encode in parallel (-1: SentencePiece's default, all cores)."""
        return self.src.encode(list(lines), num_threads=threads)

    def encode_tgt(self, lines: Iterable[str], threads: int = -1) -> list[list[int]]:
        return self.tgt.encode(list(lines), num_threads=threads)

    def decode_tgt(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return self.tgt.decode([list(x) for x in ids])

    def src_pieces(self, line: str) -> list[str]:
        return self.src.encode(line, out_type=str)

    def tgt_pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.tgt.id_to_piece(int(i)) for i in ids]


def load_tokenizer(directory: Path) -> Tokenizer:
    """Load the tokenizer stored in a run/model directory (joint or separate files)."""
    if (directory / JOINT_FILE).is_file():
        processor = _load_processor(directory / JOINT_FILE)
        return Tokenizer(processor, processor, (directory / JOINT_FILE,))
    if (directory / SRC_FILE).is_file() or (directory / TGT_FILE).is_file():
        return Tokenizer(_load_processor(directory / SRC_FILE), _load_processor(directory / TGT_FILE),
                         (directory / SRC_FILE, directory / TGT_FILE))
    raise CheckpointError(f"{directory}: no tokenizer ({JOINT_FILE}, or {SRC_FILE} and {TGT_FILE}); "
                          "is this a run directory made by `nmt train`?")


def prepare_tokenizer(config: TokenizerConfig, directory: Path, src_lines: Sequence[str],
                      tgt_lines: Sequence[str], seed: int = 1, reuse: bool = False) -> Tokenizer:
    """Put the tokenizer into `directory`: copy the configured model(s) or train new ones.

    With `reuse` (a resumed run) the tokenizer already in `directory` is kept as it is.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if reuse:
        return load_tokenizer(directory)
    for stale in (JOINT_FILE, SRC_FILE, TGT_FILE):  # left by an earlier, unfinished start
        (directory / stale).unlink(missing_ok=True)
    if config.joint:
        target = directory / JOINT_FILE
        if config.model:
            _copy_model(Path(config.model), target)
        else:
            train_sentencepiece(list(src_lines) + list(tgt_lines), target, config, seed)
    else:
        for given, lines, name in ((config.src_model, src_lines, SRC_FILE), (config.tgt_model, tgt_lines, TGT_FILE)):
            if given:
                _copy_model(Path(given), directory / name)
            else:
                train_sentencepiece(lines, directory / name, config, seed)
    return load_tokenizer(directory)


def _copy_model(source: Path, target: Path) -> None:
    _load_processor(source)  # validate before copying
    atomic.write_bytes(target, source.read_bytes())


def prepare_tokenizer_from_sample(config: TokenizerConfig, directory: Path,
                                  sample: Callable[[], tuple[Sequence[str], Sequence[str]]], seed: int = 1,
                                  cache: Optional[Path] = None) -> Tokenizer:
    """`prepare_tokenizer` for corpora too large to hold: `sample()` gives (source, target) sentences, and is
    called only when a model has to be trained. A model trained from scratch is also kept in `cache` (a
    directory named for the corpus and these settings), where the next run on the same corpus finds it.
    """
    trains_all = not (config.model if config.joint else (config.src_model or config.tgt_model))
    names = (JOINT_FILE,) if config.joint else (SRC_FILE, TGT_FILE)
    if trains_all and cache is not None and all((cache / name).is_file() for name in names):
        log.info("tokenizer trained on this corpus before, from %s", cache)
        directory.mkdir(parents=True, exist_ok=True)
        for name in names:
            _copy_model(cache / name, directory / name)
        return load_tokenizer(directory)
    needs_sample = trains_all or (not config.joint and not (config.src_model and config.tgt_model))
    src, tgt = sample() if needs_sample else ([], [])
    tokenizer = prepare_tokenizer(config, directory, src, tgt, seed)
    if trains_all and cache is not None:
        def store(tmp: Path) -> None:
            tmp.mkdir()
            for file in tokenizer.files:
                shutil.copyfile(file, tmp / file.name)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic.atomic_write(cache, store, existing="keep")  # another run may have stored the same model
        except OSError:  # only a shortcut for later runs
            pass
    return tokenizer
