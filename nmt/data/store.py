"""The prepared corpus on disk: token ids in one Arrow IPC file, memory-mapped for training.

Layout of a store (one file, `tokens.arrow`): record batches of two list columns, `src` and `tgt`,
holding each pair's token ids (no special tokens) as unsigned 16-bit integers when the vocabulary
fits (32-bit otherwise). The file is mapped, not read: every process that trains from it (loader
workers, DDP ranks) shares the same pages of the page cache, and only the lengths (2 bytes per pair
and side) live in each process's own memory. Rows are gathered straight from the mapping: every
record batch's offsets and values lie at known positions in it, so a batch of rows from anywhere in
the file is a few vectorised numpy indexing operations, with no Python object per token.
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

SIDES = ("src", "tgt")


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type holding every id of a vocabulary."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _schema(dtype: np.dtype) -> pa.Schema:
    item = pa.from_numpy_dtype(dtype)
    return pa.schema([(side, pa.list_(item)) for side in SIDES])


def ragged(ids: Sequence[Sequence[int]], dtype: np.dtype) -> pa.ListArray:
    """A list array of `ids`, built through numpy (pyarrow's conversion of Python lists is ~5x slower)."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(chain.from_iterable(ids), dtype=dtype, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


class StoreWriter:
    """Writes record batches of (source ids, target ids) into a store file."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.schema = _schema(self.dtype)
        self.sink = pa.OSFile(str(path), "wb")
        self.writer = pa.ipc.new_file(self.sink, self.schema)

    def write(self, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> None:
        if len(src):
            self.write_batch(pa.record_batch([ragged(src, self.dtype), ragged(tgt, self.dtype)], schema=self.schema))

    def write_batch(self, batch: pa.RecordBatch) -> None:
        self.writer.write_batch(batch)

    def close(self) -> None:
        self.writer.close()
        self.sink.close()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def record_batches(path: Path) -> list[pa.RecordBatch]:
    """The record batches of an Arrow file, memory-mapped (nothing is copied)."""
    reader = pa.ipc.open_file(pa.memory_map(str(path)))
    return [reader.get_batch(i) for i in range(reader.num_record_batches)]


class TokenStore:
    """A memory-mapped store: `rows` pairs, their lengths, and batches of rows gathered as padded arrays."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        source = pa.memory_map(str(self.path))
        reader = pa.ipc.open_file(source)
        source.seek(0)
        self._mapping = source.read_buffer()  # the whole file, mapped; keeps the views below valid
        base = self._mapping.address
        size = self._mapping.size
        self.dtype = np.dtype(reader.schema.field("src").type.value_type.to_pandas_dtype())
        self._offsets_view = np.frombuffer(self._mapping, dtype=np.int32, count=size // 4)
        self._values_view = np.frombuffer(self._mapping, dtype=self.dtype, count=size // self.dtype.itemsize)
        first_rows, offset_at, value_at = [0], {s: [] for s in SIDES}, {s: [] for s in SIDES}
        lengths: dict[str, list[np.ndarray]] = {s: [] for s in SIDES}
        for index in range(reader.num_record_batches):
            batch = reader.get_batch(index)
            for side in SIDES:
                column = batch.column(side)
                offsets, values = column.buffers()[1], column.buffers()[3]
                assert column.offset == 0 and (offsets.address - base) % 4 == 0 \
                    and (values.address - base) % self.dtype.itemsize == 0  # Arrow aligns buffers to 8 bytes
                offset_at[side].append((offsets.address - base) // 4)
                value_at[side].append((values.address - base) // self.dtype.itemsize)
                positions = np.frombuffer(offsets, dtype=np.int32, count=len(column) + 1)
                lengths[side].append(np.diff(positions))
            first_rows.append(first_rows[-1] + batch.num_rows)
        self.rows = first_rows[-1]
        self._first_rows = np.array(first_rows, dtype=np.int64)
        self._offset_at = {s: np.array(offset_at[s], dtype=np.int64) for s in SIDES}
        self._value_at = {s: np.array(value_at[s], dtype=np.int64) for s in SIDES}
        # 2 bytes per pair and side: the one per-pair array each training process holds.
        self.lengths = {s: _compact(np.concatenate(lengths[s]) if lengths[s] else np.zeros(0, np.int32)) for s in SIDES}

    def gather(self, side: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(len(rows), longest) int64 ids of `rows`' `side`, padded with 0 (the padding id), and (len(rows),) their lengths."""
        rows = np.asarray(rows, dtype=np.int64)
        batch = np.searchsorted(self._first_rows, rows, side="right") - 1
        at = self._offset_at[side][batch] + rows - self._first_rows[batch]
        starts = self._offsets_view[at].astype(np.int64)
        lengths = self._offsets_view[at + 1] - starts
        longest = int(lengths.max()) if len(rows) else 0
        columns = np.arange(longest)
        inside = columns < lengths[:, None]
        where = np.where(inside, (self._value_at[side][batch] + starts)[:, None] + columns, 0)
        return np.where(inside, self._values_view[where], 0).astype(np.int64), lengths

    def row(self, side: str, index: int) -> list[int]:
        """The ids of one row's `side`."""
        ids, length = self.gather(side, np.array([index]))
        return ids[0, : length[0]].tolist()


def _compact(lengths: np.ndarray) -> np.ndarray:
    return lengths.astype(np.uint16 if not len(lengths) or lengths.max() < 1 << 16 else np.uint32)
