"""Reading parallel corpora in bounded chunks, whatever their form: text file pairs (.gz too), TSV, JSONL,
`datasets` saved to disk, and hub datasets (streamed). Nothing here holds a whole corpus; `read_lines`
and `read_corpus` collect the chunks for small inputs (validation sets, files to translate)."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Optional

from nmt import atomic
from nmt.errors import DataError

log = logging.getLogger(__name__)

BLOCK_BYTES = 1 << 22  # bytes read from a file at a time
CHUNK_PAIRS = 20_000  # pairs handed on at a time
_BOM = b"\xef\xbb\xbf"


def _open_binary(path: Path) -> BinaryIO:
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a text file")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc}); check the file's permissions") from None


class LineBlocks:
    """The lines of a UTF-8 text file (optionally .gz), a block of complete lines at a time.

    A BOM and CRLF endings are accepted; lines are split on "\\n" only (str.splitlines would also split
    on \\x0b, \\x1c, U+2028 ... and break the alignment of parallel files). A final newline ends the
    last line, it does not start another. Invalid UTF-8 raises DataError naming the file and line.
    `position` is how many bytes of the file (compressed, for .gz) have been read, for progress bars.
    """

    def __init__(self, path: str | Path, block_bytes: int = BLOCK_BYTES) -> None:
        self.path, self.block_bytes = Path(path), block_bytes
        self.lines = 0  # lines yielded so far
        self.position = 0
        self.size = self.path.stat().st_size if self.path.is_file() else 0

    def __iter__(self) -> Iterator[list[str]]:
        raw = _open_binary(self.path)
        stream: BinaryIO = gzip.GzipFile(fileobj=raw) if self.path.suffix == ".gz" else raw  # type: ignore[assignment]
        with raw, stream:
            tail, offset, first = b"", 0, True  # offset: decompressed bytes before `tail`
            while True:
                block = self._read(stream)
                self.position = raw.tell()
                if not block:
                    break
                if first:
                    first = False
                    while len(block) < len(_BOM) and block == _BOM[: len(block)] and (more := self._read(stream)):
                        block += more
                    if block.startswith(_BOM):
                        block, offset = block[len(_BOM):], len(_BOM)
                data = tail + block
                cut = data.rfind(b"\n")
                if cut < 0:
                    tail = data
                    continue
                yield self._decode(data[:cut], offset)
                offset += cut + 1
                tail = data[cut + 1:]
            if tail:
                yield self._decode(tail, offset)

    def _read(self, stream: BinaryIO) -> bytes:
        try:
            return stream.read(self.block_bytes)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{self.path}: cannot read ({exc}); check the file's permissions and format") from None

    def _decode(self, data: bytes, offset: int) -> list[str]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = self.lines + data[: exc.start].count(b"\n") + 1
            raise DataError(f"{self.path}:{line}: invalid UTF-8 (byte offset {offset + exc.start}); "
                            "convert the file to UTF-8") from None
        lines = text.split("\n")
        if "\r" in text:
            lines = [line[:-1] if line.endswith("\r") else line for line in lines]
        self.lines += len(lines)
        return lines


def read_lines(path: str | Path) -> list[str]:
    """All lines of a UTF-8 text file (optionally .gz); for inputs that fit in memory. See `LineBlocks`."""
    return [line for block in LineBlocks(path) for line in block]


def check_output_path(path: str | Path) -> Path:
    """Raise DataError unless `path` can be written as a file; checked before any long work starts."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file name")
    parent = path.parent
    if not parent.is_dir():
        raise DataError(f"{path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(f"{path}: cannot write in {parent} (permission denied)")
    return path


Chunk = tuple[list[str], list[str]]


@dataclass
class CorpusSource:
    """A parallel corpus to read: its form, where it is, and how far reading has got.

    `chunks()` yields (source lines, target lines) of up to CHUNK_PAIRS pairs, as they are in the
    corpus (not stripped). `done` and `total` measure progress in `unit`s (bytes of the files, or rows).
    """

    spec: str
    kind: str  # pair, tsv, jsonl, dataset or hub
    src_lang: str
    tgt_lang: str
    paths: tuple[Path, ...] = ()
    split: str = ""
    hub_config: str = ""
    unit: str = "B"
    total: Optional[int] = None
    done: int = 0
    _dataset: Any = field(default=None, repr=False)

    def chunks(self) -> Iterator[Chunk]:
        self.done = 0
        readers: dict[str, Callable[[], Iterator[Chunk]]] = {
            "pair": self._pair_chunks, "tsv": self._tsv_chunks, "jsonl": self._jsonl_chunks,
            "dataset": self._dataset_chunks, "hub": self._hub_chunks}
        return readers[self.kind]()

    # -- text files -----------------------------------------------------------------------------
    def _pair_chunks(self) -> Iterator[Chunk]:
        src_path, tgt_path = self.paths
        src_blocks, tgt_blocks = LineBlocks(src_path), LineBlocks(tgt_path)
        src_iter, tgt_iter = iter(src_blocks), iter(tgt_blocks)
        src_buffer: list[str] = []
        tgt_buffer: list[str] = []
        src_open = tgt_open = True
        while src_open or tgt_open:
            # Read from whichever side is behind, so the buffers stay within a block of each other.
            if src_open and (len(src_buffer) <= len(tgt_buffer) or not tgt_open):
                block = next(src_iter, None)
                src_open = block is not None
                src_buffer += block or []
            else:
                block = next(tgt_iter, None)
                tgt_open = block is not None
                tgt_buffer += block or []
            self.done = src_blocks.position + tgt_blocks.position
            while min(len(src_buffer), len(tgt_buffer)) >= CHUNK_PAIRS:
                yield src_buffer[:CHUNK_PAIRS], tgt_buffer[:CHUNK_PAIRS]
                del src_buffer[:CHUNK_PAIRS], tgt_buffer[:CHUNK_PAIRS]
            if (not src_open and len(src_buffer) < len(tgt_buffer)) or (not tgt_open and len(tgt_buffer) < len(src_buffer)):
                # One file ended first: count the other's remaining lines for the message.
                for _ in src_iter if src_open else tgt_iter:
                    pass
                n_src = src_blocks.lines
                n_tgt = tgt_blocks.lines
                raise DataError(f"{src_path} has {n_src} lines but {tgt_path} has {n_tgt}; "
                                "parallel files must be line-aligned")
        if src_buffer:
            yield src_buffer, tgt_buffer

    def _numbered_lines(self) -> Iterator[tuple[int, list[str]]]:
        """(number of the block's first line, lines) of the single file of a TSV or JSONL corpus."""
        blocks = LineBlocks(self.paths[0])
        for block in blocks:
            self.done = blocks.position
            yield blocks.lines - len(block) + 1, block

    def _tsv_chunks(self) -> Iterator[Chunk]:
        for first, block in self._numbered_lines():
            src, tgt = [], []
            for number, line in enumerate(block, start=first):
                columns = line.split("\t")
                if len(columns) != 2:
                    raise DataError(f"{self.paths[0]}:{number}: expected 2 tab-separated columns, found {len(columns)}")
                src.append(columns[0]), tgt.append(columns[1])
            yield from _split(src, tgt)

    def _jsonl_chunks(self) -> Iterator[Chunk]:
        for first, block in self._numbered_lines():
            src, tgt = [], []
            for number, line in enumerate(block, start=first):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    pair = record.get("translation", record)
                    if "src" in pair:
                        s, t = pair["src"], pair["tgt"]
                    else:
                        s, t = pair[self.src_lang], pair[self.tgt_lang]
                    if not isinstance(s, str) or not isinstance(t, str):
                        raise TypeError
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                    raise DataError(f"{self.paths[0]}:{number}: expected a JSON object with src/tgt or "
                                    f"translation.{self.src_lang}/translation.{self.tgt_lang} strings") from None
                src.append(s), tgt.append(t)
            yield from _split(src, tgt)

    # -- datasets -------------------------------------------------------------------------------
    def _dataset_chunks(self) -> Iterator[Chunk]:
        for table in self._dataset.with_format("arrow").iter(batch_size=CHUNK_PAIRS):
            src, tgt = _columns(table.column_names, lambda name: table.column(name).to_pylist(), self.spec,
                                self.src_lang, self.tgt_lang)
            self.done += len(src)
            yield src, tgt

    def _hub_chunks(self) -> Iterator[Chunk]:
        from nmt.hub import hub_errors  # records are fetched while iterating: any failure is one line

        with hub_errors(self.spec, what=f"split '{self.split}'"):
            for batch in self._dataset.iter(batch_size=CHUNK_PAIRS):
                src, tgt = _columns(list(batch), batch.__getitem__, self.spec, self.src_lang, self.tgt_lang)
                self.done += len(src)
                yield src, tgt

    # -- identity -------------------------------------------------------------------------------
    def content_key(self, memo: "HashMemo") -> str:
        """A hash of what the corpus holds and how it is read: the files' bytes (streamed; remembered
        by `memo` while a file's size and modification time stay the same), or the hub dataset's revision."""
        digest = hashlib.sha256(f"{self.kind}|{self.src_lang}|{self.tgt_lang}|{self.split}|{self.hub_config}".encode())
        if self.kind == "hub":
            digest.update(f"{self.spec}|{_hub_revision(self.spec[4:])}".encode())
        elif self.kind == "dataset":
            root = self.paths[0]
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                digest.update(f"{path.relative_to(root)}|{memo.file_hash(path)}".encode())
        else:
            for path in self.paths:
                digest.update(memo.file_hash(path).encode())
        return digest.hexdigest()


def _split(src: list[str], tgt: list[str]) -> Iterator[Chunk]:
    for start in range(0, len(src), CHUNK_PAIRS):
        yield src[start:start + CHUNK_PAIRS], tgt[start:start + CHUNK_PAIRS]


def _columns(names: list[str], column: Callable[[str], list], where: str, src_lang: str,
             tgt_lang: str) -> tuple[list[str], list[str]]:
    """The source and target sentences of a batch of dataset rows, by column layout."""
    if "translation" in names:
        rows = column("translation")
        languages = set(rows[0]) if rows else set()
        missing = {src_lang, tgt_lang} - languages
        if rows and missing:
            raise DataError(f"{where}: translation column has no language {sorted(missing)}; languages: {sorted(languages)}")
        return [r[src_lang] for r in rows], [r[tgt_lang] for r in rows]
    for a, b in ((src_lang, tgt_lang), ("src", "tgt")):
        if a in names and b in names:
            return list(column(a)), list(column(b))
    raise DataError(f"{where}: no 'translation' column and no '{src_lang}'/'{tgt_lang}' columns (found {names})")


def _hub_revision(name: str) -> str:
    """The hub dataset's current commit, so that a changed dataset is prepared again."""
    from huggingface_hub import HfApi

    from nmt.hub import hub_errors, offline

    if offline():  # nothing may be sent: the cached copy is what will be read
        return "offline"
    with hub_errors(f"hub:{name}", what="its revision"):
        return HfApi().dataset_info(name).sha or ""


def with_gz(path: Path) -> Path:
    """`path`, or PATH.gz where only that exists."""
    gz = path.with_name(path.name + ".gz")
    return gz if not path.exists() and gz.exists() else path


def _pick_split(dataset: Any, split: str, where: str) -> Any:
    import datasets

    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in dataset:
            raise DataError(f"{where}: no split '{split}' (splits: {', '.join(dataset)})")
        return dataset[split]
    return dataset


def open_corpus(spec: str, src_lang: str, tgt_lang: str, split: str = "train", hub_config: str = "") -> CorpusSource:
    """Find the corpus `spec` names (file prefix, .tsv, .jsonl, saved dataset dir or hub:NAME) without reading it.

    Missing files and unreadable datasets are reported here, before any long work starts.
    """
    if spec.startswith("hub:"):
        from nmt.hub import load_hub_dataset  # one DataError line for any hub failure, no retry loop offline

        dataset = load_hub_dataset(spec[4:], hub_config, split, streaming=True)
        info = getattr(dataset, "info", None)
        splits = getattr(info, "splits", None) or {}
        total = splits[split].num_examples if split in splits else None
        return CorpusSource(spec, "hub", src_lang, tgt_lang, split=split, hub_config=hub_config, unit="pairs",
                      total=total, _dataset=dataset)
    path = Path(spec)
    if path.is_dir():
        import datasets

        try:
            dataset = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as exc:
            raise DataError(f"{path}: not a dataset saved with save_to_disk ({exc})") from None
        dataset = _pick_split(dataset, split, str(path))
        return CorpusSource(spec, "dataset", src_lang, tgt_lang, (path,), split=split, unit="pairs", total=len(dataset),
                      _dataset=dataset)
    name = path.name.removesuffix(".gz")
    for suffix, kind in ((".tsv", "tsv"), (".jsonl", "jsonl"), (".json", "jsonl")):
        if name.endswith(suffix):
            _open_binary(path).close()
            return CorpusSource(spec, kind, src_lang, tgt_lang, (path,), total=path.stat().st_size)
    src_path = with_gz(path.with_name(f"{path.name}.{src_lang}"))
    tgt_path = with_gz(path.with_name(f"{path.name}.{tgt_lang}"))
    if not src_path.exists() and not path.exists():
        raise DataError(f"{spec}: corpus not found (looked for {src_path} and {tgt_path}, a .tsv/.jsonl file or a dataset dir)")
    for part in (src_path, tgt_path):
        _open_binary(part).close()
    return CorpusSource(spec, "pair", src_lang, tgt_lang, (src_path, tgt_path),
                  total=src_path.stat().st_size + tgt_path.stat().st_size)


def read_corpus(spec: str, src_lang: str, tgt_lang: str, split: str = "train",
                hub_config: str = "") -> tuple[list[str], list[str]]:
    """A whole parallel corpus as two lists of lines; for small corpora such as validation sets."""
    src: list[str] = []
    tgt: list[str] = []
    for s, t in open_corpus(spec, src_lang, tgt_lang, split, hub_config).chunks():
        src += s
        tgt += t
    return src, tgt


class HashMemo:
    """SHA-256 of files, remembered in a small JSON file by path, size, modification time and inode, so that
    an unchanged multi-GB corpus is not read again to find its cache entry."""

    def __init__(self, path: Optional[Path]) -> None:
        self.path = path
        self.entries: dict[str, list] = {}
        if path is not None:
            try:
                self.entries = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                pass

    def file_hash(self, path: Path) -> str:
        stat = path.stat()
        identity = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        key = str(path.resolve())
        known = self.entries.get(key)
        if known is not None and known[:3] == identity:
            return known[3]
        if stat.st_size > 1 << 30:
            log.info("hashing %s (%.1f GB) to find its prepared copy; done once while the file stays unchanged",
                     path, stat.st_size / 1e9)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(BLOCK_BYTES):
                digest.update(block)
        self.entries[key] = [*identity, digest.hexdigest()]
        self._save()
        return digest.hexdigest()

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_text(self.path, json.dumps(self.entries))
        except OSError:
            pass  # only a speed-up: the next run hashes the file again
