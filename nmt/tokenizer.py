"""SentencePiece tokenizers: train, load, encode and decode, joint or separate vocabularies."""

from __future__ import annotations

import io
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece as spm

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
            # the same data and config give the same tokenizer everywhere. 2 threads: 2.4 s there.
            num_threads=2,
        )
    except RuntimeError as exc:
        raise DataError(f"tokenizer training for {output.name} failed: {exc}") from None
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(output)
    log.info("trained %s in %.0f s", output.name, time.monotonic() - started)
    return output


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

    def encode_src(self, lines: Iterable[str]) -> list[list[int]]:
        return self.src.encode(list(lines))

    def encode_tgt(self, lines: Iterable[str]) -> list[list[int]]:
        return self.tgt.encode(list(lines))

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
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(source.read_bytes())
    tmp.replace(target)
