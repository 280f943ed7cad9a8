"""SentencePiece tokenizers: train, load, encode and decode, joint or separate vocabularies; an imported
model's own vocabulary over its SentencePiece models, and language tags."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import random
import re
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
from nmt.languages import match_language

# Fixed special ids, the same in every vocabulary this toolkit trains.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

JOINT_FILE = "spm.model"
SRC_FILE = "spm.src.model"
TGT_FILE = "spm.tgt.model"

log = logging.getLogger(__name__)


def tag_piece(code: str) -> str:
    """The piece of language `code`'s tag in a vocabulary nmt trains: OPUS-MT's form, `>>de<<`."""
    return f">>{code}<<"


TAG_PIECE = re.compile(r">>([A-Za-z0-9_]+)<<")


def train_sentencepiece(sentences: Sequence[str], output: Path, config: TokenizerConfig, seed: int = 1,
                        symbols: Sequence[str] = ()) -> Path:
    """Train one SentencePiece model on `sentences` and write it to `output` (atomically); `symbols` (language
    tags) are pieces of their own, never split, at the ids after the specials."""
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
                user_defined_symbols=list(symbols),
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


def _load_processor(path: Path, own_ids: bool = True) -> spm.SentencePieceProcessor:
    """A SentencePiece model; `own_ids`: one of nmt's, whose special ids are nmt's (an imported model's
    pieces are mapped onto its vocabulary instead, see `Vocabulary`)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: tokenizer model not found (train one with `nmt tokenizer train` or `nmt train`)")
    try:
        processor = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"{path}: not a SentencePiece model ({exc})") from None
    ids = (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id())
    if own_ids and ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
        raise CheckpointError(f"{path}: special ids (pad, unk, bos, eos) are {ids}, expected {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}")
    return processor


VOCAB_FILE = "vocab.json"


@dataclass
class Vocabulary:
    """A model's own vocabulary, for models whose ids are not their SentencePiece models' (imported ones):
    the piece of every model id, source and target (the same list when they share one id space),
    nmt's specials at PAD_ID, UNK_ID, BOS_ID, EOS_ID, and the language tags: code -> the tag's piece.
    Written to `vocab.json` beside the SentencePiece models."""

    source: list[str]
    target: list[str]
    tags: dict[str, str]

    def __post_init__(self) -> None:
        self.source_index = {piece: i for i, piece in enumerate(self.source)}
        self.target_index = self.source_index if self.target is self.source else {p: i for i, p in enumerate(self.target)}

    @classmethod
    def read(cls, path: Path) -> "Vocabulary":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            source = list(data["source"])
            return cls(source, list(data["target"]) if "target" in data else source, dict(data.get("tags", {})))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: unreadable vocabulary ({exc})") from None

    def write(self, path: Path) -> None:
        data: dict = {"source": self.source}
        if self.target is not self.source:
            data["target"] = self.target
        data["tags"] = self.tags
        atomic.write_text(path, json.dumps(data, ensure_ascii=False))

    def tag_id(self, code: str) -> int:
        """The (source-side) id of language `code`'s tag."""
        return self.source_index[self.tags[code]]


@dataclass
class Tokenizer:
    """Source and target SentencePiece processors (the same object when the vocabulary is joint), and for an
    imported model the `vocab` its ids belong to.

    `src_prefix` and `tgt_prefix` are the ids every source and target starts with: a language
    pair's tags (`for_languages`), as `language_tags` says: target_in_source puts the target
    language's tag before the source; source_and_forced_target puts the source's there and the
    target's first in the target, where decoding forces it.
    """

    src: spm.SentencePieceProcessor
    tgt: spm.SentencePieceProcessor
    files: tuple[Path, ...]
    vocab: Optional[Vocabulary] = None
    language_tags: str = "none"
    tags: dict[str, str] = dataclasses.field(default_factory=dict)  # a trained vocabulary's tags: code -> piece
    src_prefix: tuple[int, ...] = ()
    tgt_prefix: tuple[int, ...] = ()

    @property
    def joint(self) -> bool:
        return self.vocab.source is self.vocab.target if self.vocab is not None else self.src is self.tgt

    @property
    def src_vocab_size(self) -> int:
        return len(self.vocab.source) if self.vocab is not None else self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return len(self.vocab.target) if self.vocab is not None else self.tgt.get_piece_size()

    def encode_src(self, lines: Iterable[str], threads: int = -1) -> list[list[int]]:
        """Token ids of each line; `threads` encode in parallel (-1: SentencePiece's default, all cores)."""
        index = self.vocab.source_index if self.vocab is not None else None
        return self._encode(self.src, index, self.src_prefix, lines, threads)

    def encode_tgt(self, lines: Iterable[str], threads: int = -1) -> list[list[int]]:
        index = self.vocab.target_index if self.vocab is not None else None
        return self._encode(self.tgt, index, self.tgt_prefix, lines, threads)

    @staticmethod
    def _encode(processor: spm.SentencePieceProcessor, index: Optional[dict[str, int]], prefix: tuple[int, ...],
                lines: Iterable[str], threads: int) -> list[list[int]]:
        if index is None:
            ids = processor.encode(list(lines), num_threads=threads)
        else:  # the model's ids of the pieces, as Hugging Face's MarianTokenizer maps them: unknown pieces are UNK
            ids = [[index.get(piece, UNK_ID) for piece in pieces]
                   for pieces in processor.encode(list(lines), out_type=str, num_threads=threads)]
        return [[*prefix, *row] for row in ids] if prefix else ids

    def decode_tgt(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Text of each output; language tags (and, in a model's own vocabulary, its specials) are left out."""
        if self.vocab is None:
            drop = set(self.tgt_prefix) | {self.tgt.piece_to_id(p) for p in self.tags.values()}
            if not drop:
                return self.tgt.decode([list(x) for x in ids])
            return self.tgt.decode([[int(i) for i in x if int(i) not in drop] for x in ids])
        vocab = self.vocab
        special = {PAD_ID, UNK_ID, BOS_ID, EOS_ID} | {vocab.target_index[p] for p in vocab.tags.values()
                                                       if p in vocab.target_index}
        # Pieces back to text as Hugging Face's MarianTokenizer does (with the source model when the
        # vocabulary is joint), its special tokens skipped.
        processor = self.src if self.joint else self.tgt
        return [processor.decode_pieces([vocab.target[i] for i in map(int, x) if i not in special]).strip()
                for x in ids]

    def src_pieces(self, line: str) -> list[str]:
        if self.vocab is None:
            return self.src.encode(line, out_type=str)
        return [self.vocab.source[i] for i in self.encode_src([line])[0]]

    def tgt_pieces(self, ids: Sequence[int]) -> list[str]:
        if self.vocab is None:
            return [self.tgt.id_to_piece(int(i)) for i in ids]
        return [self.vocab.target[int(i)] for i in ids]

    def languages(self) -> list[str]:
        """The language codes this tokenizer has tags for (none without language tags)."""
        if self.language_tags == "none":
            return []
        return sorted(self.vocab.tags if self.vocab is not None else self.tags)

    def for_languages(self, src_lang: str, tgt_lang: str) -> "Tokenizer":
        """This tokenizer with the tags of translating `src_lang` into `tgt_lang` as prefixes (itself when
        the model has no language tags). A language without a tag is a DataError naming those there are."""
        if self.language_tags == "none":
            return self
        target = self._tag(tgt_lang, "target")
        if self.language_tags == "target_in_source":
            return dataclasses.replace(self, src_prefix=(target,), tgt_prefix=())
        source = self._tag(src_lang, "source")
        code = self._code(tgt_lang, "target")
        target_side = (self.vocab.target_index[self.vocab.tags[code]] if self.vocab is not None
                       else self.tgt.piece_to_id(self.tags[code]))
        return dataclasses.replace(self, src_prefix=(source,), tgt_prefix=(target_side,))

    def _code(self, code: str, side: str) -> str:
        known = self.languages()
        found = match_language(code, known)
        if found is None:
            shown = ", ".join(known[:12]) + (f" and {len(known) - 12} more" if len(known) > 12 else "")
            what = f"{side} language {code!r}" if code else f"no {side} language given"
            raise DataError(f"{what}: this model has tags for {shown} (--{side[:3]}-lang, or the server's {side})")
        return found

    def _tag(self, code: str, side: str) -> int:
        if self.vocab is not None:
            return self.vocab.tag_id(self._code(code, side))
        return self.src.piece_to_id(self.tags[self._code(code, side)])


def load_tokenizer(directory: Path, language_tags: str = "none") -> Tokenizer:
    """Load the tokenizer stored in a run/model directory (joint or separate files; with `vocab.json`, an
    imported model's vocabulary); `language_tags` is the run's tokenizer.language_tags."""
    vocab = Vocabulary.read(directory / VOCAB_FILE) if (directory / VOCAB_FILE).is_file() else None
    own = vocab is None
    extra = (directory / VOCAB_FILE,) if vocab is not None else ()
    if language_tags != "none" and vocab is not None and not vocab.tags:
        raise CheckpointError(f"{directory}: tokenizer.language_tags is {language_tags}, but {VOCAB_FILE} names no tags")
    if (directory / JOINT_FILE).is_file():
        processor = _load_processor(directory / JOINT_FILE, own)
        tags = _trained_tags(processor, directory / JOINT_FILE) if own and language_tags != "none" else {}
        return Tokenizer(processor, processor, (directory / JOINT_FILE, *extra), vocab, language_tags, tags)
    if (directory / SRC_FILE).is_file() or (directory / TGT_FILE).is_file():
        return Tokenizer(_load_processor(directory / SRC_FILE, own), _load_processor(directory / TGT_FILE, own),
                         (directory / SRC_FILE, directory / TGT_FILE, *extra), vocab, language_tags)
    raise CheckpointError(f"{directory}: no tokenizer ({JOINT_FILE}, or {SRC_FILE} and {TGT_FILE}); "
                          "is this a run directory made by `nmt train`?")


def _trained_tags(processor: spm.SentencePieceProcessor, path: Path) -> dict[str, str]:
    """The language tags of a vocabulary nmt trained: its `>>xx<<` pieces, which training puts right after
    the specials (see `train_sentencepiece`)."""
    tags = {}
    for i in range(EOS_ID + 1, processor.get_piece_size()):
        found = TAG_PIECE.fullmatch(processor.id_to_piece(i))
        if found is None:
            break
        tags[found.group(1)] = found.group(0)
    if not tags:
        raise CheckpointError(f"{path}: tokenizer.language_tags is set, but the model has no >>xx<< tags")
    return tags


def prepare_tokenizer(config: TokenizerConfig, directory: Path, src_lines: Sequence[str],
                      tgt_lines: Sequence[str], seed: int = 1, reuse: bool = False,
                      symbols: Sequence[str] = ()) -> Tokenizer:
    """Put the tokenizer into `directory`: copy the configured model(s) or train new ones (with `symbols`,
    language tags, as pieces of their own).

    With `reuse` (a resumed run) the tokenizer already in `directory` is kept as it is.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if reuse:
        return load_tokenizer(directory, config.language_tags)
    for stale in (JOINT_FILE, SRC_FILE, TGT_FILE):  # left by an earlier, unfinished start
        (directory / stale).unlink(missing_ok=True)
    if config.joint:
        target = directory / JOINT_FILE
        if config.model:
            _copy_model(Path(config.model), target)
        else:
            train_sentencepiece(list(src_lines) + list(tgt_lines), target, config, seed, symbols)
    else:
        for given, lines, name in ((config.src_model, src_lines, SRC_FILE), (config.tgt_model, tgt_lines, TGT_FILE)):
            if given:
                _copy_model(Path(given), directory / name)
            else:
                train_sentencepiece(lines, directory / name, config, seed)
    return load_tokenizer(directory, config.language_tags)


def _copy_model(source: Path, target: Path) -> None:
    _load_processor(source)  # validate before copying
    atomic.write_bytes(target, source.read_bytes())


def prepare_tokenizer_from_sample(config: TokenizerConfig, directory: Path,
                                  sample: Callable[[], tuple[Sequence[str], Sequence[str]]], seed: int = 1,
                                  cache: Optional[Path] = None, symbols: Sequence[str] = ()) -> Tokenizer:
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
        return load_tokenizer(directory, config.language_tags)
    needs_sample = trains_all or (not config.joint and not (config.src_model and config.tgt_model))
    src, tgt = sample() if needs_sample else ([], [])
    tokenizer = prepare_tokenizer(config, directory, src, tgt, seed, symbols=symbols)
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
